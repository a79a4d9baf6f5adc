//! `fog-agent client`: the market-side view of an agent over mutual TLS — inventory, capacity,
//! telemetry, attestation, health and jobs — human or `--json` (canonical proto3 JSON, one document
//! per message, so `--watch` output is JSON lines).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::job_network::{job_network, parse_publish, parse_rate, rate};
use super::render::bytes;

/// Arguments of `fog-agent client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The agent: `https://HOST:PORT` (mutual TLS), or `unix:PATH` for the local admin socket.
    #[arg(long, value_name = "URL")]
    pub addr: String,
    /// CA that signed the agent's server certificate (PEM); required for https.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM); its URI SAN names the role. Required for https.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM). Required for https.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Print canonical proto3 JSON instead of the human view.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub query: Query,
}

/// What `fog-agent client` asks.
#[derive(Debug, Subcommand)]
pub enum Query {
    /// The hardware inventory.
    Inventory {
        /// Ask the agent to collect it again.
        #[arg(long)]
        refresh: bool,
    },
    /// What the host offers.
    Capacity {
        /// Keep printing every change.
        #[arg(long)]
        watch: bool,
    },
    /// Host telemetry samples.
    Telemetry {
        /// Keep printing samples (otherwise print one).
        #[arg(long)]
        watch: bool,
        /// Interval between samples (0 = the agent's minimum).
        #[arg(long, default_value_t = 1000, value_name = "MS")]
        interval_millis: u64,
    },
    /// A TPM attestation report over a nonce.
    Attest {
        /// The nonce, hex (16 to 64 bytes).
        #[arg(long, value_name = "HEX")]
        nonce: String,
        /// Write the report (the JSON `fog-agent verify` reads) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// A job's signed usage receipts: the `fog-receipts-v1` bundle (GetReceipts), or with
    /// `--watch` each receipt as it is signed (WatchReceipts, until the job's end receipt).
    Receipts {
        /// The job id.
        job_id: String,
        /// Write the bundle (the JSON `fog-agent verify receipts` reads) to this file.
        #[arg(long, value_name = "FILE", conflicts_with = "watch")]
        out: Option<PathBuf>,
        /// Stream the receipts as they are signed instead.
        #[arg(long)]
        watch: bool,
    },
    /// The standard gRPC health check of the Agent service.
    Health,
    /// Jobs: start, stop, get, list, logs.
    #[command(subcommand)]
    Job(JobQuery),
    /// The agent's image store: import a layout on the agent's host, remove an image.
    #[command(subcommand)]
    Image(ImageQuery),
    /// The market link: each market endpoint's reverse tunnel (up, role, reconnects, streams,
    /// last error). Exit code 3 when an endpoint's tunnel is down.
    Market,
}

/// `fog-agent client image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageQuery {
    /// Import an OCI image layout directory on the agent's host (ImportImage).
    Import {
        /// Absolute path of the layout directory on the agent's host.
        dir: String,
        /// The reference to record (default: the layout's `org.opencontainers.image.ref.name`).
        #[arg(long, value_name = "NAME")]
        tag: Option<String>,
    },
    /// Remove an image: a reference, or every reference to a `sha256:` digest; the image goes
    /// with its last reference (RemoveImage; refused while an active job runs it).
    Rm {
        /// A reference or a manifest digest.
        name: String,
    },
}

/// `fog-agent client job ...`.
#[derive(Debug, Subcommand)]
pub enum JobQuery {
    /// Start a job (idempotent on the id); prints the job once it runs.
    Start {
        /// The job id.
        #[arg(long)]
        id: String,
        /// An imported image (reference or digest).
        #[arg(long)]
        image: String,
        /// CPU in millicores.
        #[arg(long, default_value_t = 1000)]
        cpu_millicores: i64,
        /// Memory limit (`"512 MiB"` or bytes).
        #[arg(long, default_value = "512 MiB", value_parser = crate::config::parse_size)]
        memory: u64,
        /// Largest number of processes.
        #[arg(long, default_value_t = 256)]
        pids: i64,
        /// GPUs by UUID or PCI bus id (repeatable).
        #[arg(long = "gpu")]
        gpus: Vec<String>,
        /// Scratch space (`"1 GiB"` or bytes).
        #[arg(long, default_value = "0", value_parser = crate::config::parse_size)]
        scratch: u64,
        /// Size of `/dev/shm` (`"2 GiB"` or bytes), charged to `--memory`; 0 = half of it.
        #[arg(long, default_value = "0", value_parser = crate::config::parse_size)]
        shm: u64,
        /// Publish a container port on a host port the agent picks (repeatable; TCP unless
        /// `/udp`); `job get` shows `host_address:host_port -> port/proto`.
        #[arg(long = "publish", value_name = "PORT[/tcp|/udp]", value_parser = parse_publish)]
        publish: Vec<pb::PortMapping>,
        /// Rate limit of traffic into the job: bits per second, with an optional suffix k, M,
        /// G or T, optionally followed by "bit" (`10M`, `10Mbit`, `1.5G`); 0 = no limit.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate)]
        ingress_rate: i64,
        /// Rate limit of traffic out of the job, as `--ingress-rate`.
        #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate)]
        egress_rate: i64,
        /// `NAME=value` (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
        /// Time limit in ms (0 = the agent's default).
        #[arg(long, default_value_t = 0)]
        time_limit_millis: u64,
        /// The command and its arguments (empty = the image's).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Stop a job (SIGTERM, SIGKILL after the grace period).
    Stop {
        /// The job id.
        id: String,
        /// Grace period in ms (0 = 5000).
        #[arg(long, default_value_t = 0)]
        grace_millis: u64,
    },
    /// One job.
    Get {
        /// The job id.
        id: String,
    },
    /// Every job, newest first (every page of ListJobs).
    List {
        /// Only jobs that have not ended.
        #[arg(long)]
        active: bool,
    },
    /// A job's output.
    Logs {
        /// The job id.
        id: String,
        /// Earlier lines per stream.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep printing until the job ends.
        #[arg(long)]
        follow: bool,
    },
}

/// Runs `fog-agent client`.
pub fn run(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(query(args))
}

async fn connect(args: &ClientArgs) -> anyhow::Result<Channel> {
    if let Some(path) = args.addr.strip_prefix("unix:") {
        return connect_unix(PathBuf::from(path)).await;
    }
    let tls = TlsFiles {
        ca: args.ca.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    connect_tls(&args.addr, &tls.read(&args.addr)?).await
}

/// The `--ca`, `--cert` and `--key` files of a mutual-TLS connection.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA of the agent's server certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate (its URI SAN names the role).
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the three files into a client TLS config (each required; `addr` for the message).
    pub fn read(&self, addr: &str) -> anyhow::Result<ClientTlsConfig> {
        let read = |flag: &str, path: &Option<PathBuf>| {
            let path = path
                .as_ref()
                .with_context(|| format!("{flag} is required for {addr}"))?;
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("--ca", &self.ca)?))
            .identity(Identity::from_pem(
                read("--cert", &self.cert)?,
                read("--key", &self.key)?,
            )))
    }
}

/// A mutual-TLS channel to the agent at `addr` (`https://HOST:PORT`).
pub async fn connect_tls(addr: &str, tls: &ClientTlsConfig) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("--addr {addr}: not a URL"))?
        .connect_timeout(Duration::from_secs(10))
        .tls_config(tls.clone())
        .context("cannot configure TLS")?;
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// A channel over the local admin socket (no TLS: the socket's mode is the access control).
/// Also what the tests and the jobs latency benchmark connect with.
pub async fn connect_unix(path: PathBuf) -> anyhow::Result<Channel> {
    let display = path.display().to_string();
    let connector = tower::service_fn(move |_: tonic::transport::Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://fog-agent.local")
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("cannot connect to {display}"))
}

async fn query(args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let channel = connect(args).await?;
    if let Query::Health = args.query {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "fog.agent.v1.Agent".to_owned(),
            })
            .await
            .context("health check failed")?
            .into_inner();
        let status = tonic_health::pb::health_check_response::ServingStatus::try_from(reply.status)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN");
        if args.json {
            out(&format!("{{\"status\":\"{status}\"}}"))?;
        } else {
            out(status)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = AgentClient::new(channel);
    match &args.query {
        Query::Inventory { refresh } => {
            let reply = client
                .get_inventory(pb::GetInventoryRequest { refresh: *refresh })
                .await
                .context("GetInventory failed")?
                .into_inner();
            if args.json {
                out(&String::from_utf8_lossy(&reply.inventory_json))?;
            } else {
                let inventory = reply.inventory.unwrap_or_default();
                out(&human_inventory(&inventory))?;
            }
        }
        Query::Capacity { watch: false } => {
            let reply = client
                .get_capacity(pb::GetCapacityRequest {})
                .await
                .context("GetCapacity failed")?
                .into_inner();
            print_capacity(&reply.capacity.unwrap_or_default(), args.json)?;
        }
        Query::Capacity { watch: true } => {
            let mut stream = client
                .watch_capacity(pb::WatchCapacityRequest {})
                .await
                .context("WatchCapacity failed")?
                .into_inner();
            while let Some(msg) = stream.message().await.context("WatchCapacity stream")? {
                print_capacity(&msg.capacity.unwrap_or_default(), args.json)?;
            }
        }
        Query::Telemetry {
            watch,
            interval_millis,
        } => {
            let mut stream = client
                .watch_host_telemetry(pb::WatchHostTelemetryRequest {
                    interval_millis: *interval_millis,
                })
                .await
                .context("WatchHostTelemetry failed")?
                .into_inner();
            while let Some(msg) = stream
                .message()
                .await
                .context("WatchHostTelemetry stream")?
            {
                if args.json {
                    out(&to_json(&msg, "fog.agent.v1.WatchHostTelemetryResponse")?)?;
                } else {
                    out(&human_sample(&msg))?;
                }
                if !watch {
                    break;
                }
            }
        }
        Query::Attest { nonce, out: file } => {
            let nonce = hex::decode(nonce.trim())
                .map_err(|err| super::CliError::Usage(format!("--nonce: not hex: {err}")))?;
            let reply = client
                .get_attestation(pb::GetAttestationRequest {
                    nonce,
                    pcr_selection: None,
                })
                .await
                .context("GetAttestation failed")?
                .into_inner();
            let report = reply.report.unwrap_or_default();
            if let Some(file) = file {
                std::fs::write(file, &report.report_json)
                    .with_context(|| format!("cannot write {}", file.display()))?;
            }
            if args.json {
                out(&String::from_utf8_lossy(&report.report_json))?;
            } else {
                out(&format!(
                    "{} report for host {} ({} bytes); verify with `fog-agent verify`",
                    report.format,
                    report.host_id,
                    report.report_json.len()
                ))?;
            }
        }
        Query::Receipts {
            job_id,
            out: file,
            watch,
        } => receipts_query(&mut client, job_id, file.as_deref(), *watch, args.json).await?,
        Query::Health => unreachable_health()?,
        Query::Job(job) => return job_query(&mut client, job, args.json).await,
        Query::Image(image) => image_query(&mut client, image, args.json).await?,
        Query::Market => {
            let reply = client
                .get_market_links(pb::GetMarketLinksRequest {})
                .await
                .context("GetMarketLinks failed")?
                .into_inner();
            print_market_links(&reply, args.json)?;
            if reply.links.iter().any(|link| !link.up) {
                return Ok(ExitCode::from(super::EXIT_DEGRADED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `client receipts`: the bundle (written to `file` when given), or the stream.
async fn receipts_query(
    client: &mut AgentClient<Channel>,
    job_id: &str,
    file: Option<&std::path::Path>,
    watch: bool,
    json: bool,
) -> anyhow::Result<()> {
    if watch {
        let mut stream = client
            .watch_receipts(pb::WatchReceiptsRequest {
                job_id: job_id.to_owned(),
            })
            .await
            .context("WatchReceipts failed")?
            .into_inner();
        while let Some(event) = stream.message().await.context("WatchReceipts stream")? {
            if json {
                out(&to_json(&event, "fog.agent.v1.ReceiptEvent")?)?;
            } else {
                out(&format!(
                    "job {} receipt {} ({}): {} bytes signed",
                    event.job_id,
                    event.seq,
                    event.kind,
                    event.signed_receipt_json.len()
                ))?;
            }
        }
        return Ok(());
    }
    let reply = client
        .get_receipts(pb::GetReceiptsRequest {
            job_id: job_id.to_owned(),
        })
        .await
        .context("GetReceipts failed")?
        .into_inner();
    if let Some(file) = file {
        std::fs::write(file, &reply.bundle_json)
            .with_context(|| format!("cannot write {}", file.display()))?;
    }
    if json {
        out(&String::from_utf8_lossy(&reply.bundle_json))
    } else {
        out(&format!(
            "fog-receipts-v1 bundle of job {job_id}: {} receipts ({} bytes); verify with `fog-agent verify receipts`",
            reply.receipts,
            reply.bundle_json.len()
        ))
    }
}

fn print_market_links(reply: &pb::GetMarketLinksResponse, json: bool) -> anyhow::Result<()> {
    if json {
        return out(&to_json(reply, "fog.agent.v1.GetMarketLinksResponse")?);
    }
    if reply.links.is_empty() {
        return out("no market endpoints configured ([market] endpoints)");
    }
    let mut table = super::render::table(
        &[
            "endpoint", "tunnel", "role", "up since", "connects", "failures", "streams", "in",
            "out",
        ],
        &[4, 5, 6, 7, 8],
    );
    let mut errors = String::new();
    for link in &reply.links {
        let since = link
            .up_since
            .and_then(|t| std::time::SystemTime::try_from(t).ok())
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        table.add_row(vec![
            link.endpoint.clone(),
            if link.up { "up" } else { "down" }.to_owned(),
            link.role.clone(),
            since,
            link.connects.to_string(),
            link.failures.to_string(),
            format!("{} ({} total)", link.streams_open, link.streams_total),
            bytes(link.bytes_in),
            bytes(link.bytes_out),
        ]);
        if !link.last_error.is_empty() {
            errors.push_str(&format!("\n{}: {}", link.endpoint, link.last_error));
        }
    }
    out(&format!("{table}{errors}"))
}

async fn image_query(
    client: &mut AgentClient<Channel>,
    query: &ImageQuery,
    json: bool,
) -> anyhow::Result<()> {
    let line = |image: &pb::Image| {
        format!(
            "{} {} {}",
            image.reference,
            image.manifest_digest,
            bytes(image.size_bytes)
        )
    };
    match query {
        ImageQuery::Import { dir, tag } => {
            let reply = client
                .import_image(pb::ImportImageRequest {
                    layout_dir: dir.clone(),
                    reference: tag.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("ImportImage: {}", s.message()))?
                .into_inner();
            if json {
                return out(&to_json(&reply, "fog.agent.v1.ImportImageResponse")?);
            }
            out(&format!(
                "imported {}",
                line(&reply.image.unwrap_or_default())
            ))
        }
        ImageQuery::Rm { name } => {
            let reply = client
                .remove_image(pb::RemoveImageRequest { name: name.clone() })
                .await
                .map_err(|s| anyhow::anyhow!("RemoveImage: {}", s.message()))?
                .into_inner();
            if json {
                return out(&to_json(&reply, "fog.agent.v1.RemoveImageResponse")?);
            }
            let image = reply.image.unwrap_or_default();
            if reply.rootfs_removed {
                out(&format!("removed {}", line(&image)))
            } else {
                out(&format!(
                    "untagged {} ({} still has other references)",
                    reply.removed_references.join(", "),
                    image.manifest_digest
                ))
            }
        }
    }
}

async fn job_query(
    client: &mut AgentClient<Channel>,
    query: &JobQuery,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let print_job = |job: &pb::Job| -> anyhow::Result<()> {
        if json {
            return out(&to_json(job, "fog.agent.v1.Job")?);
        }
        out(&human_job(job))
    };
    match query {
        JobQuery::Start {
            id,
            image,
            cpu_millicores,
            memory,
            pids,
            gpus,
            scratch,
            shm,
            publish,
            ingress_rate,
            egress_rate,
            env,
            time_limit_millis,
            command,
        } => {
            let to_i64 = |flag: &str, v: u64| {
                i64::try_from(v).with_context(|| format!("{flag}: {v} is too large"))
            };
            let spec = pb::JobSpec {
                job_id: id.clone(),
                image: image.clone(),
                command: command.clone(),
                env: env.clone(),
                resources: Some(pb::JobResources {
                    cpu_millicores: *cpu_millicores,
                    memory_bytes: to_i64("--memory", *memory)?,
                    pids: *pids,
                    gpus: gpus.clone(),
                    scratch_bytes: to_i64("--scratch", *scratch)?,
                    ingress_bits_per_second: *ingress_rate,
                    egress_bits_per_second: *egress_rate,
                    shm_bytes: to_i64("--shm", *shm)?,
                }),
                time_limit_millis: *time_limit_millis,
                ports: publish.clone(),
                ..pb::JobSpec::default()
            };
            let reply = client
                .start_job(pb::StartJobRequest { spec: Some(spec) })
                .await
                .map_err(|s| anyhow::anyhow!("StartJob: {}", s.message()))?
                .into_inner();
            print_job(&reply.job.unwrap_or_default())?;
        }
        JobQuery::Stop { id, grace_millis } => {
            let reply = client
                .stop_job(pb::StopJobRequest {
                    job_id: id.clone(),
                    grace_millis: *grace_millis,
                })
                .await
                .map_err(|s| anyhow::anyhow!("StopJob: {}", s.message()))?
                .into_inner();
            print_job(&reply.job.unwrap_or_default())?;
        }
        JobQuery::Get { id } => {
            let reply = client
                .get_job(pb::GetJobRequest { job_id: id.clone() })
                .await
                .map_err(|s| anyhow::anyhow!("GetJob: {}", s.message()))?
                .into_inner();
            print_job(&reply.job.unwrap_or_default())?;
        }
        JobQuery::List { active } => {
            // Page after page until the agent says there is none left.
            let mut page_token = String::new();
            loop {
                let reply = client
                    .list_jobs(pb::ListJobsRequest {
                        active_only: *active,
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("ListJobs: {}", s.message()))?
                    .into_inner();
                for job in &reply.jobs {
                    print_job(job)?;
                }
                if reply.next_page_token.is_empty() {
                    break;
                }
                page_token = reply.next_page_token;
            }
        }
        JobQuery::Logs { id, tail, follow } => {
            let mut stream = client
                .job_logs(pb::JobLogsRequest {
                    job_id: id.clone(),
                    tail_lines: *tail,
                    follow: *follow,
                })
                .await
                .map_err(|s| anyhow::anyhow!("JobLogs: {}", s.message()))?
                .into_inner();
            while let Some(msg) = stream.message().await.context("JobLogs stream")? {
                let Some(line) = msg.log else { continue };
                if json {
                    out(&to_json(&line, "fog.agent.v1.LogLine")?)?;
                } else {
                    let tag = if line.stream() == pb::LogStream::Stderr {
                        "err"
                    } else {
                        "out"
                    };
                    out(&format!("{tag} {}", String::from_utf8_lossy(&line.line)))?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per job (the id first): state, usage, network (traffic, addresses, published
/// ports), exit, message and notes (how its GPUs are given).
fn human_job(job: &pb::Job) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let usage = job.usage.clone().unwrap_or_default();
    let state = job.state().as_str_name().trim_start_matches("JOB_STATE_");
    let mut line = format!(
        "{} {} cpu {:.2} s mem {:.3} GiB·s {:.1} s",
        spec.job_id,
        state.to_lowercase(),
        usage.cpu_seconds,
        usage.memory_gib_seconds,
        usage.duration_millis as f64 / 1000.0
    );
    line.push_str(&job_network(job));
    if let Some(code) = job.exit_code {
        line.push_str(&format!(
            " exit {code} ({})",
            job.termination()
                .as_str_name()
                .trim_start_matches("TERMINATION_REASON_")
                .to_lowercase()
        ));
    }
    if !job.message.is_empty() {
        line.push_str(&format!(" — {}", job.message));
    }
    if !job.notes.is_empty() {
        line.push_str(&format!(" (notes: {})", job.notes.join("; ")));
    }
    line
}

fn unreachable_health() -> anyhow::Result<()> {
    bail!("health is answered before the Agent client is built")
}

/// Writes one line to stdout (a closed pipe is an error, not a panic).
fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", text.trim_end()).context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")
}

/// Canonical proto3 JSON of a message, through the descriptor set.
fn to_json(message: &impl prost::Message, full_name: &str) -> anyhow::Result<String> {
    let pool = prost_reflect::DescriptorPool::decode(fog_proto::FILE_DESCRIPTOR_SET)
        .context("cannot load the proto descriptors")?;
    let descriptor = pool
        .get_message_by_name(full_name)
        .with_context(|| format!("no message {full_name}"))?;
    let dynamic =
        prost_reflect::DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .context("cannot re-decode the message")?;
    serde_json::to_string(&dynamic).context("cannot write JSON")
}

fn print_capacity(capacity: &pb::Capacity, json: bool) -> anyhow::Result<()> {
    if json {
        return out(&to_json(capacity, "fog.agent.v1.Capacity")?);
    }
    out(&human_capacity(capacity))
}

/// A table of each resource's amounts (network rates in bits per second), then the notes.
fn human_capacity(capacity: &pb::Capacity) -> String {
    let mut table = super::render::table(
        &[
            "resource",
            "total",
            "reserved",
            "allocated",
            "stored",
            "free",
        ],
        &[1, 2, 3, 4, 5],
    );
    let row = |name: &str, a: &Option<pb::ResourceAmount>, fmt: &dyn Fn(u64) -> String| {
        let a = a.unwrap_or_default();
        vec![
            name.to_owned(),
            fmt(a.total),
            fmt(a.reserved),
            fmt(a.allocated),
            fmt(a.stored),
            fmt(a.free),
        ]
    };
    let cores = |m: u64| format!("{:.2} CPUs", m as f64 / 1000.0);
    table.add_row(row("cpu", &capacity.cpu_millicores, &cores));
    table.add_row(row("memory", &capacity.memory_bytes, &bytes));
    table.add_row(row("disk", &capacity.disk_bytes, &bytes));
    table.add_row(row(
        "network in",
        &capacity.network_ingress_bits_per_second,
        &rate,
    ));
    table.add_row(row(
        "network out",
        &capacity.network_egress_bits_per_second,
        &rate,
    ));
    for gpu in &capacity.gpus {
        let state = pb::GpuAssignment::try_from(gpu.assignment)
            .map(|a| {
                a.as_str_name()
                    .trim_start_matches("GPU_ASSIGNMENT_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        table.add_row(vec![
            format!("gpu {} {}", gpu.pci_bus_id, gpu.name),
            "1".into(),
            String::new(),
            String::new(),
            state,
        ]);
    }
    let mut text = format!("capacity #{}\n{table}", capacity.sequence);
    for note in &capacity.notes {
        text.push_str(&format!("\nnote: {note}"));
    }
    text
}

fn human_inventory(inv: &pb::Inventory) -> String {
    let mut lines = Vec::new();
    let status = |probe: &Option<pb::ProbeResult>| {
        probe
            .as_ref()
            .filter(|p| p.status != pb::ProbeStatus::Ok as i32)
            .map(|p| format!("unavailable: {}", p.reason))
    };
    if let Some(fp) = &inv.fingerprint {
        lines.push(format!("fingerprint  {}:{}", fp.algorithm, fp.value));
    }
    if let Some(host) = &inv.host {
        match (&host.data, status(&host.probe)) {
            (Some(h), _) => lines.push(format!(
                "host         {} ({}, kernel {}, {})",
                h.hostname, h.os_pretty_name, h.kernel_release, h.virtualization
            )),
            (None, why) => lines.push(format!("host         {}", why.unwrap_or_default())),
        }
    }
    if let Some(cpu) = &inv.cpu {
        match (&cpu.data, status(&cpu.probe)) {
            (Some(c), _) => lines.push(format!(
                "cpu          {} — {} cores / {} threads, {}",
                c.model_name,
                c.physical_cores,
                c.logical_cpus,
                c.features.join(" ")
            )),
            (None, why) => lines.push(format!("cpu          {}", why.unwrap_or_default())),
        }
    }
    if let Some(mem) = &inv.memory {
        match (&mem.data, status(&mem.probe)) {
            (Some(m), _) => lines.push(format!(
                "memory       {} ({} available)",
                bytes(m.total_bytes),
                bytes(m.available_bytes)
            )),
            (None, why) => lines.push(format!("memory       {}", why.unwrap_or_default())),
        }
    }
    if let Some(gpus) = &inv.gpus {
        match status(&gpus.probe) {
            Some(why) => lines.push(format!("gpus         {why}")),
            None if gpus.gpus.is_empty() => lines.push("gpus         none".to_owned()),
            None => {
                for g in &gpus.gpus {
                    lines.push(format!(
                        "gpu          {} {} {}",
                        g.pci_bus_id,
                        g.name,
                        bytes(g.memory_total_bytes)
                    ));
                }
            }
        }
    }
    if let Some(storage) = &inv.storage {
        match status(&storage.probe) {
            Some(why) => lines.push(format!("disks        {why}")),
            None => {
                for d in &storage.block_devices {
                    lines.push(format!(
                        "disk         {} {} {}",
                        d.name,
                        d.kind,
                        bytes(d.size_bytes)
                    ));
                }
            }
        }
    }
    if let Some(network) = &inv.network {
        match status(&network.probe) {
            Some(why) => lines.push(format!("network      {why}")),
            None => {
                for i in network.interfaces.iter().filter(|i| !i.is_virtual) {
                    lines.push(format!(
                        "nic          {} {} {}",
                        i.name,
                        i.driver,
                        i.addresses.join(" ")
                    ));
                }
            }
        }
    }
    lines.join("\n")
}

fn human_sample(msg: &pb::WatchHostTelemetryResponse) -> String {
    let sample = msg.sample.clone().unwrap_or_default();
    let cpu = sample.cpu.unwrap_or_default();
    let mem = sample.memory.unwrap_or_default();
    let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}%"));
    let mut line = format!(
        "#{} cpu {} steal {} load {:.2} mem {} used / {} available",
        sample.sequence,
        pct(cpu.utilization_percent),
        pct(cpu.steal_percent),
        cpu.load_1m,
        bytes(mem.used_bytes),
        bytes(mem.available_bytes)
    );
    if msg.gap_count > 0 {
        line.push_str(&format!(" (lost {} samples)", msg.gap_count));
    }
    for gpu in &sample.gpus {
        if gpu.status == pb::GpuSampleStatus::Ok as i32 {
            line.push_str(&format!(
                " | gpu {} {}%",
                gpu.pci_bus_id,
                gpu.utilization_percent.unwrap_or(0)
            ));
        } else {
            line.push_str(&format!(
                " | gpu {} unavailable: {}",
                gpu.pci_bus_id, gpu.error
            ));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_line_starts_with_its_id_and_shows_its_network() {
        let job = pb::Job {
            spec: Some(pb::JobSpec {
                job_id: "web".into(),
                ..pb::JobSpec::default()
            }),
            state: pb::JobState::Running.into(),
            addresses: vec!["10.89.0.2/16".into()],
            published_ports: vec![pb::PublishedPort {
                container_port: 80,
                protocol: pb::PortProtocol::Tcp.into(),
                host_address: "192.0.2.10".into(),
                host_port: 30000,
            }],
            usage: Some(pb::JobUsage {
                cpu_seconds: 1.5,
                network_receive_bytes: 2048,
                network_transmit_bytes: 10,
                ..pb::JobUsage::default()
            }),
            ..pb::Job::default()
        };
        assert_eq!(
            human_job(&job),
            "web running cpu 1.50 s mem 0.000 GiB·s 0.0 s net received 2 KiB sent 10 B \
             addresses 10.89.0.2/16 ports 192.0.2.10:30000 -> 80/tcp"
        );
    }

    #[test]
    fn a_jobs_json_has_its_network() {
        let job = pb::Job {
            addresses: vec!["10.89.0.2/16".into()],
            published_ports: vec![pb::PublishedPort {
                container_port: 53,
                protocol: pb::PortProtocol::Udp.into(),
                host_address: "192.0.2.10".into(),
                host_port: 30001,
            }],
            usage: Some(pb::JobUsage {
                network_receive_bytes: 7,
                network_transmit_packets: 1,
                ..pb::JobUsage::default()
            }),
            ..pb::Job::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&to_json(&job, "fog.agent.v1.Job").unwrap()).unwrap();
        assert_eq!(json["addresses"], serde_json::json!(["10.89.0.2/16"]));
        assert_eq!(
            json["publishedPorts"][0],
            serde_json::json!({
                "containerPort": 53,
                "protocol": "PORT_PROTOCOL_UDP",
                "hostAddress": "192.0.2.10",
                "hostPort": 30001,
            })
        );
        assert_eq!(json["usage"]["networkReceiveBytes"], "7");
        assert_eq!(json["usage"]["networkTransmitPackets"], "1");
    }

    #[test]
    fn capacity_shows_the_network_rates() {
        let amount = |total, allocated| pb::ResourceAmount {
            total,
            allocated,
            free: total - allocated,
            ..pb::ResourceAmount::default()
        };
        let capacity = pb::Capacity {
            network_ingress_bits_per_second: Some(amount(10_000_000_000, 1_500_000_000)),
            network_egress_bits_per_second: Some(amount(10_000_000_000, 0)),
            notes: vec!["network: measured".into()],
            ..pb::Capacity::default()
        };
        let text = human_capacity(&capacity);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        assert_eq!(
            row("network in").as_deref(),
            Some("network in 10 Gbit/s 0 bit/s 1.5 Gbit/s 0 bit/s 8.5 Gbit/s"),
            "{text}"
        );
        assert_eq!(
            row("network out").as_deref(),
            Some("network out 10 Gbit/s 0 bit/s 0 bit/s 0 bit/s 10 Gbit/s"),
            "{text}"
        );
        assert!(text.ends_with("note: network: measured"), "{text}");
    }
}
