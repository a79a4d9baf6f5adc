//! Benchmark of the market link (not a test): a minimal market written with tonic, a
//! `grpctunnel.v1.TunnelService` server with mutual TLS that accepts the agent's
//! `OpenReverseTunnel`, answers `grpctunnel-negotiate: on`, reads the agent's settings and sends
//! RPCs back through the tunnel (revision 1: `NewStream` with a 64 KiB window, the request
//! message, `half_close`; a `window_update` per response chunk it consumes). Against
//! `fog-agent serve` processes it started itself, on loopback only, it measures in one run:
//!
//! 1. `latency`: GetCapacity through the tunnel and over a direct mutual-TLS connection to the
//!    agent's TCP listener, sequential, in alternating blocks; p50/p99 of each.
//! 2. `telemetry`: one WatchHostTelemetry stream through the tunnel and one direct, open at the
//!    same time on the same agent (so both get the same samples); lag = receive time minus the
//!    sample's `taken_at`, also paired per sample.
//! 3. `streams`: N WatchHostTelemetry streams held open on one tunnel (a fresh agent), then N
//!    direct ones (another fresh agent): all served, RSS before/after = memory per open
//!    stream, the agent's CPU and the lag while they run.
//! 4. `tunnels`: an agent whose `[market] endpoints` lists one market K times (K tunnels),
//!    started while the market is down; RSS before the market starts and once all K are up =
//!    memory per idle tunnel.
//! 5. `storm`: an agent with the market listed S times (S reconnecting tunnel loops, default
//!    reconnect settings); once all S are up and have been for longer than
//!    `healthy_after_millis`, the market (its own tokio runtime, so every connection drops as
//!    in a crash) is stopped, restarted on the same port after a pause, and the accept time of
//!    every reconnect is recorded: time until all are back, per-second histogram, peak/average
//!    accept rate. A second round stops it again 10 s after the last tunnel is back (most of
//!    them up for less than `healthy_after_millis`: no spread).
//!
//! ```sh
//! cargo build --release -p fog-agent --bin fog-agent --example tunnel_bench
//! target/release/examples/tunnel_bench --agent target/release/fog-agent
//! ```
//! (`benches/tunnel-bench.sh` runs exactly this.)

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use clap::Parser;
use fog_proto::grpctunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use fog_proto::grpctunnel::v1::{
    client_to_server, server_to_client, ClientToServer, MessageData, Metadata, NewStream,
    ProtocolRevision, ServerToClient, Settings,
};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::sync::{mpsc, oneshot, Notify};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic::{Code, Request, Response, Status, Streaming};

/// Benchmark of the market link (reverse tunnel) against direct connections.
#[derive(Debug, Parser)]
struct Args {
    /// The fog-agent binary to start.
    #[arg(long)]
    agent: PathBuf,
    /// Phases to run, comma-separated: latency, telemetry, streams, tunnels, storm.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "latency,telemetry,streams,tunnels,storm"
    )]
    phases: Vec<String>,
    /// Timed GetCapacity calls per path.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Untimed warm-up calls per path.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Calls per block; the paths alternate block by block, the first path alternating too.
    #[arg(long, default_value_t = 100)]
    block: usize,
    /// Window of the telemetry lag comparison.
    #[arg(long, default_value_t = 30)]
    telemetry_seconds: u64,
    /// Interval of the two streams of the `telemetry` phase (0 = the agent's default, its
    /// `[telemetry] min_interval_millis`, 250 ms unless configured).
    #[arg(long, default_value_t = 0)]
    telemetry_interval_millis: u64,
    /// Interval of every stream of the `streams` phase.
    #[arg(long, default_value_t = 1000)]
    interval_millis: u64,
    /// Streams held open on one tunnel (and directly) in the `streams` phase.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Measured window of the `streams` phase, per path.
    #[arg(long, default_value_t = 10)]
    streams_seconds: u64,
    /// Open-all/cancel-all cycles of the streams on each path (RSS after each).
    #[arg(long, default_value_t = 3)]
    streams_cycles: usize,
    /// HTTP/2 connections the direct streams are spread over (the agent allows 256 streams per
    /// connection).
    #[arg(long, default_value_t = 10)]
    direct_connections: usize,
    /// Tunnels of the `tunnels` phase (the same endpoint listed K times).
    #[arg(long, default_value_t = 100)]
    idle_tunnels: usize,
    /// Tunnels of the `storm` phase.
    #[arg(long, default_value_t = 1000)]
    storm_tunnels: usize,
    /// How long every tunnel is up before the first stop (above the agent's default
    /// healthy_after_millis of 30 s, so the reconnect spread applies).
    #[arg(long, default_value_t = 35)]
    storm_hold_secs: u64,
    /// How long the market stays down.
    #[arg(long, default_value_t = 5)]
    storm_down_secs: u64,
    /// Give up waiting for the tunnels to come back after this long.
    #[arg(long, default_value_t = 240)]
    storm_timeout_secs: u64,
    /// Restarts: the first `--storm-hold-secs` after the last tunnel came up, each further one
    /// `--storm-rehold-secs` after the last tunnel came back.
    #[arg(long, default_value_t = 2)]
    storm_rounds: usize,
    /// Uptime of the last tunnel back before the second and later restarts.
    #[arg(long, default_value_t = 10)]
    storm_rehold_secs: u64,
    /// Keep the agents' logs and configs here (default: a temporary dir, removed).
    #[arg(long)]
    keep: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Processes and measurements.

/// CPU ticks (user + system) and RSS (KiB) of a process.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("bad /proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime, rss_kb(pid)?))
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Percentile (nearest rank) of sorted microseconds, in ms.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

fn mean_ms(values: &[u64]) -> f64 {
    values.iter().sum::<u64>() as f64 / values.len().max(1) as f64 / 1000.0
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Lag of a sample received now, in microseconds.
fn lag_micros(sample: Option<&pb::HostSample>) -> Option<u64> {
    let taken = sample?.taken_at.as_ref()?;
    let taken = SystemTime::UNIX_EPOCH + Duration::new(taken.seconds as u64, taken.nanos as u32);
    Some(
        SystemTime::now()
            .duration_since(taken)
            .unwrap_or_default()
            .as_micros() as u64,
    )
}

/// Raises this process's open-file limit to its hard limit (the market side holds one socket
/// per tunnel).
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read/write the struct we pass, which lives for the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// The files every agent and market share.
struct Setup {
    agent_bin: PathBuf,
    dir: PathBuf,
    certs: PathBuf,
}

/// A `fog-agent serve` child, killed on drop.
struct Agent {
    child: Child,
    name: String,
    log: PathBuf,
    port: u16,
    metrics_port: u16,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts an agent with a TCP listener on a free port and these market endpoints.
    async fn start(setup: &Setup, name: &str, endpoints: &[String]) -> anyhow::Result<Agent> {
        let port = free_port()?;
        let metrics_port = free_port()?;
        let dir = setup.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let c = setup.certs.display();
        let endpoints = endpoints
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = [\"127.0.0.1:{port}\"]\nunix_socket = \"\"\n\
                 tls_cert = \"{c}/server.pem\"\ntls_key = \"{c}/server.key\"\n\
                 client_ca = \"{c}/ca.pem\"\n\
                 [state]\ndir = \"{d}/state\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
                 [bench]\nrun_on_start = false\n\
                 [market]\nendpoints = [{endpoints}]\nca = \"{c}/ca.pem\"\n\
                 client_cert = \"{c}/agent.pem\"\nclient_key = \"{c}/agent.key\"\n",
                d = dir.display()
            ),
        )?;
        let log = dir.join("agent.log");
        let child = Command::new(&setup.agent_bin)
            .args(["--log", "info", "serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start the agent")?;
        let agent = Agent {
            child,
            name: name.to_owned(),
            log,
            port,
            metrics_port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("agent {name} did not listen; see {}", agent.log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(agent)
    }

    /// The sum of every series of a metric family on the agent's /metrics, and the series
    /// count.
    fn metric(&self, family: &str) -> anyhow::Result<(f64, usize)> {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(tcp, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut text = String::new();
        tcp.read_to_string(&mut text)?;
        let mut sum = 0.0;
        let mut series = 0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(family) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                continue;
            }
            if let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sum += value;
                series += 1;
            }
        }
        Ok((sum, series))
    }

    /// A direct mutual-TLS channel to the agent's listener with the market's client
    /// certificate.
    async fn direct_channel(&self, setup: &Setup) -> anyhow::Result<Channel> {
        let read = |name: &str| std::fs::read(setup.certs.join(name));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")?))
            .identity(Identity::from_pem(read("market.pem")?, read("market.key")?));
        Ok(
            Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))?
                .tls_config(tls)?
                .connect()
                .await?,
        )
    }

    /// The agent's warnings and errors (JSON log lines), grouped by message and error with
    /// the endpoint left out and digits replaced by `#`.
    fn log_summary(&self) -> Vec<(usize, String)> {
        let Ok(text) = std::fs::read_to_string(&self.log) else {
            return Vec::new();
        };
        let mut groups: HashMap<String, usize> = HashMap::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let level = entry["level"].as_str().unwrap_or("");
            if level != "WARN" && level != "ERROR" {
                continue;
            }
            let fields = &entry["fields"];
            let mut key = format!("{level} {}", fields["message"].as_str().unwrap_or(""));
            for name in ["error", "reason"] {
                if let Some(value) = fields[name].as_str() {
                    key.push_str(&format!(" {name}={value}"));
                }
            }
            let key: String = key
                .chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            *groups.entry(key).or_default() += 1;
        }
        let mut groups: Vec<(usize, String)> = groups.into_iter().map(|(k, n)| (n, k)).collect();
        groups.sort_by(|a, b| b.cmp(a));
        groups
    }

    fn print_log_summary(&self) {
        let groups = self.log_summary();
        if groups.is_empty() {
            println!("  agent {} log: no warnings", self.name);
            return;
        }
        println!("  agent {} log warnings (grouped, digits as #):", self.name);
        for (n, line) in groups.iter().take(8) {
            let line: String = line.chars().take(220).collect();
            println!("    {n:>6} x {line}");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first (a clean shutdown), SIGKILL if it is still there.
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                println!(
                    "  agent {} exited {} ms after SIGTERM ({status})",
                    self.name,
                    t.elapsed().as_millis()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "  agent {} still running 10 s after SIGTERM: killed",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The market: a TunnelService server that sends RPCs through the reverse tunnels it accepts.

type S2c = server_to_client::Frame;
type C2s = client_to_server::Frame;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The largest chunk of message data in one frame.
const CHUNK_MAX: usize = 16_384;
/// The receive window the market gives each stream.
const WINDOW: u32 = 65_536;

/// What the market records.
#[derive(Default)]
struct MarketState {
    /// Accept time of every OpenReverseTunnel call.
    accepts: Mutex<Vec<Instant>>,
    /// When each tunnel's settings arrived.
    ready_times: Mutex<Vec<Instant>>,
    /// Tunnels with settings received and not ended.
    up: AtomicUsize,
    /// Tunnels that ended (after settings or not).
    ended: AtomicUsize,
    /// The ready tunnels (kept only when asked).
    tunnels: Mutex<Vec<Arc<Tunnel>>>,
    keep_tunnels: bool,
    /// Settings that did not offer revision 1.
    bad_settings: AtomicUsize,
    changed: Notify,
}

impl MarketState {
    fn up(&self) -> usize {
        self.up.load(Ordering::Acquire)
    }

    /// Waits until at least `n` tunnels are up; false on timeout.
    async fn wait_up(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if self.up() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.up() >= n;
            }
        }
    }

    fn tunnel(&self, index: usize) -> Option<Arc<Tunnel>> {
        lock(&self.tunnels).get(index).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The market's side of one tunnel.
struct Tunnel {
    /// Next stream id and the frame sender, under one lock so ids go out in order.
    out: Mutex<(i64, mpsc::UnboundedSender<ClientToServer>)>,
    streams: Mutex<HashMap<i64, mpsc::UnboundedSender<S2c>>>,
    settings: OnceLock<Settings>,
    gone: AtomicBool,
}

impl Tunnel {
    fn send(&self, stream_id: i64, frame: C2s) -> bool {
        lock(&self.out)
            .1
            .send(ClientToServer {
                stream_id,
                frame: Some(frame),
            })
            .is_ok()
    }

    /// Opens a stream (revision 1, a 64 KiB window), sends the one request message and
    /// half-closes.
    fn open(self: &Arc<Self>, method: &str, request: &[u8]) -> Result<CallStream, Status> {
        if self.gone.load(Ordering::Acquire) {
            return Err(Status::unavailable("the tunnel ended"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut out = lock(&self.out);
        let id = out.0;
        out.0 += 1;
        lock(&self.streams).insert(id, tx);
        let mut frames = vec![C2s::NewStream(NewStream {
            method_name: method.to_owned(),
            request_headers: Some(Metadata::default()),
            initial_window_size: WINDOW,
            protocol_revision: ProtocolRevision::RevisionOne as i32,
        })];
        let size = request.len() as u32;
        let mut chunks = request.chunks(CHUNK_MAX);
        frames.push(C2s::RequestMessage(MessageData {
            size,
            data: Bytes::copy_from_slice(chunks.next().unwrap_or_default()),
        }));
        frames.extend(chunks.map(|c| C2s::MoreRequestData(Bytes::copy_from_slice(c))));
        frames.push(C2s::HalfClose(()));
        for frame in frames {
            out.1
                .send(ClientToServer {
                    stream_id: id,
                    frame: Some(frame),
                })
                .map_err(|_| Status::unavailable("the tunnel ended"))?;
        }
        Ok(CallStream {
            id,
            tunnel: self.clone(),
            frames: rx,
            done: false,
        })
    }

    /// One unary call through the tunnel.
    async fn unary<Q: Message, R: Message + Default>(
        self: &Arc<Self>,
        method: &str,
        request: &Q,
    ) -> Result<R, Status> {
        let mut call = self.open(method, &request.encode_to_vec())?;
        let message = call
            .message()
            .await?
            .ok_or_else(|| Status::internal("no response message"))?;
        if call.message().await?.is_some() {
            return Err(Status::internal("a second response message"));
        }
        R::decode(message).map_err(|e| Status::internal(e.to_string()))
    }

    fn dispatch(&self, frame: ServerToClient) {
        let Some(inner) = frame.frame else { return };
        let close = matches!(inner, S2c::CloseStream(_));
        let mut streams = lock(&self.streams);
        if let Some(tx) = streams.get(&frame.stream_id) {
            let _ = tx.send(inner);
        }
        if close {
            streams.remove(&frame.stream_id);
        }
    }
}

/// One call's response side.
struct CallStream {
    id: i64,
    tunnel: Arc<Tunnel>,
    frames: mpsc::UnboundedReceiver<S2c>,
    done: bool,
}

impl CallStream {
    /// The next whole response message; None after an OK close.
    async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        let mut partial: Option<(usize, BytesMut)> = None;
        loop {
            let Some(frame) = self.frames.recv().await else {
                self.done = true;
                return Err(Status::unavailable("the tunnel ended"));
            };
            match frame {
                S2c::ResponseHeaders(_) | S2c::Settings(_) | S2c::WindowUpdate(_) => {}
                S2c::ResponseMessage(MessageData { size, data }) => {
                    self.consumed(data.len());
                    if data.len() >= size as usize {
                        return Ok(Some(data));
                    }
                    let mut buffer = BytesMut::with_capacity(size as usize);
                    buffer.extend_from_slice(&data);
                    partial = Some((size as usize, buffer));
                }
                S2c::MoreResponseData(data) => {
                    self.consumed(data.len());
                    let Some((size, mut buffer)) = partial.take() else {
                        return Err(Status::internal("response data outside a message"));
                    };
                    buffer.extend_from_slice(&data);
                    if buffer.len() >= size {
                        return Ok(Some(buffer.freeze()));
                    }
                    partial = Some((size, buffer));
                }
                S2c::CloseStream(close) => {
                    self.done = true;
                    let status = close.status.unwrap_or_default();
                    if status.code == 0 {
                        return Ok(None);
                    }
                    return Err(Status::new(Code::from(status.code), status.message));
                }
            }
        }
    }

    fn consumed(&self, bytes: usize) {
        if bytes > 0 {
            self.tunnel.send(self.id, C2s::WindowUpdate(bytes as u32));
        }
    }
}

impl Drop for CallStream {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.tunnel.streams).remove(&self.id);
            self.tunnel.send(self.id, C2s::Cancel(()));
        }
    }
}

#[derive(Clone)]
struct MarketService {
    state: Arc<MarketState>,
}

#[tonic::async_trait]
impl TunnelService for MarketService {
    type OpenTunnelStream = BoxStream<ServerToClient>;

    async fn open_tunnel(
        &self,
        _request: Request<Streaming<ClientToServer>>,
    ) -> Result<Response<Self::OpenTunnelStream>, Status> {
        Err(Status::unimplemented(
            "this market takes reverse tunnels only",
        ))
    }

    type OpenReverseTunnelStream = BoxStream<ClientToServer>;

    async fn open_reverse_tunnel(
        &self,
        request: Request<Streaming<ServerToClient>>,
    ) -> Result<Response<Self::OpenReverseTunnelStream>, Status> {
        lock(&self.state.accepts).push(Instant::now());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let tunnel = Arc::new(Tunnel {
            out: Mutex::new((1, tx)),
            streams: Mutex::new(HashMap::new()),
            settings: OnceLock::new(),
            gone: AtomicBool::new(false),
        });
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut ready = false;
            while let Ok(Some(frame)) = inbound.message().await {
                match &frame.frame {
                    Some(S2c::Settings(settings)) if frame.stream_id == -1 && !ready => {
                        ready = true;
                        if !settings
                            .supported_protocol_revisions
                            .contains(&(ProtocolRevision::RevisionOne as i32))
                        {
                            state.bad_settings.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = tunnel.settings.set(settings.clone());
                        lock(&state.ready_times).push(Instant::now());
                        if state.keep_tunnels {
                            lock(&state.tunnels).push(tunnel.clone());
                        }
                        state.up.fetch_add(1, Ordering::AcqRel);
                        state.changed.notify_waiters();
                    }
                    _ => tunnel.dispatch(frame),
                }
            }
            tunnel.gone.store(true, Ordering::Release);
            lock(&tunnel.streams).clear();
            if ready {
                state.up.fetch_sub(1, Ordering::AcqRel);
            }
            state.ended.fetch_add(1, Ordering::AcqRel);
            state.changed.notify_waiters();
        });
        let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok);
        let mut response = Response::new(Box::pin(frames) as Self::OpenReverseTunnelStream);
        response.metadata_mut().insert(
            fog_tunnel::NEGOTIATE_HEADER,
            tonic::metadata::MetadataValue::from_static(fog_tunnel::NEGOTIATE_ON),
        );
        Ok(response)
    }
}

/// A running market; `runtime` is its own when it must be killable (every task and socket
/// dropped at once, as in a crash).
struct Market {
    state: Arc<MarketState>,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Market {
    fn url(port: u16) -> String {
        format!("https://127.0.0.1:{port}")
    }

    fn start(
        setup: &Setup,
        port: u16,
        keep_tunnels: bool,
        own_runtime: bool,
    ) -> anyhow::Result<Market> {
        let read = |name: &str| std::fs::read(setup.certs.join(name));
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                read("market-server.pem")?,
                read("market-server.key")?,
            ))
            .client_ca_root(Certificate::from_pem(read("ca.pem")?));
        let state = Arc::new(MarketState {
            keep_tunnels,
            ..MarketState::default()
        });
        let runtime = if own_runtime {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?,
            )
        } else {
            None
        };
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TunnelServiceServer::new(MarketService {
            state: state.clone(),
        });
        let serve = {
            let _guard = runtime.as_ref().map(|r| r.enter());
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // TCP_NODELAY as gRPC servers set it (tonic's `serve` does; with an incoming of
            // our own it is ours to set): without it Nagle holds back the small frames of
            // the next call until the agent's delayed ACK, ~40 ms.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = Server::builder()
                .tls_config(tls)?
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                });
            async move {
                if let Err(err) = server.await {
                    eprintln!("market on port {port}: {err}");
                }
            }
        };
        match &runtime {
            Some(runtime) => drop(runtime.spawn(serve)),
            None => drop(tokio::spawn(serve)),
        }
        Ok(Market {
            state,
            stop: Some(stop),
            runtime,
        })
    }

    /// Drops everything at once: its runtime (every connection task, every socket) if it has
    /// one, else a graceful stop.
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        } else if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Phases.

/// The agent's default `[market] healthy_after_millis`.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

const GET_CAPACITY: &str = "/fog.agent.v1.Agent/GetCapacity";
const WATCH_TELEMETRY: &str = "/fog.agent.v1.Agent/WatchHostTelemetry";

/// Starts an agent with one tunnel to a fresh market in this runtime; waits for the tunnel.
async fn agent_with_tunnel(setup: &Setup, name: &str) -> anyhow::Result<(Agent, Market)> {
    let port = free_port()?;
    let market = Market::start(setup, port, true, false)?;
    let agent = Agent::start(setup, name, &[Market::url(port)]).await?;
    if !market.state.wait_up(1, Duration::from_secs(30)).await {
        agent.print_log_summary();
        bail!("agent {name}: no tunnel came up within 30 s");
    }
    Ok((agent, market))
}

fn report_pair(what: &str, tunnel: &mut [u64], direct: &mut [u64]) {
    tunnel.sort_unstable();
    direct.sort_unstable();
    println!(
        "  {what:<8} tunnel p50 {:.3} ms  p99 {:.3} ms  mean {:.3} ms  max {:.3} ms  (n={})",
        percentile(tunnel, 50.0),
        percentile(tunnel, 99.0),
        mean_ms(tunnel),
        percentile(tunnel, 100.0),
        tunnel.len()
    );
    println!(
        "  {what:<8} direct p50 {:.3} ms  p99 {:.3} ms  mean {:.3} ms  max {:.3} ms  (n={})",
        percentile(direct, 50.0),
        percentile(direct, 99.0),
        mean_ms(direct),
        percentile(direct, 100.0),
        direct.len()
    );
    let (t50, d50) = (percentile(tunnel, 50.0), percentile(direct, 50.0));
    let (t99, d99) = (percentile(tunnel, 99.0), percentile(direct, 99.0));
    println!(
        "  {what:<8} tunnel - direct: p50 {:+.3} ms ({:.2}x)  p99 {:+.3} ms ({:.2}x)",
        t50 - d50,
        t50 / d50,
        t99 - d99,
        t99 / d99
    );
}

async fn phase_latency(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    println!(
        "== latency: GetCapacity, tunnel vs direct mTLS, {} calls each",
        args.calls
    );
    let (agent, market) = agent_with_tunnel(setup, "latency").await?;
    let tunnel = market.state.tunnel(0).context("no tunnel")?;
    let mut direct = AgentClient::new(agent.direct_channel(setup).await?);
    let block = args.block.max(1);
    for _ in 0..args.warmup {
        tunnel
            .unary::<_, pb::GetCapacityResponse>(GET_CAPACITY, &pb::GetCapacityRequest {})
            .await?;
        direct.get_capacity(pb::GetCapacityRequest {}).await?;
    }
    let mut via_tunnel = Vec::with_capacity(args.calls);
    let mut via_direct = Vec::with_capacity(args.calls);
    let blocks = args.calls.div_ceil(block);
    for b in 0..blocks {
        let n = block.min(args.calls - b * block);
        for side in 0..2 {
            let tunnel_first = b % 2 == 0;
            if (side == 0) == tunnel_first {
                for _ in 0..n {
                    let t = Instant::now();
                    let response: pb::GetCapacityResponse = tunnel
                        .unary(GET_CAPACITY, &pb::GetCapacityRequest {})
                        .await?;
                    via_tunnel.push(t.elapsed().as_micros() as u64);
                    anyhow::ensure!(response.capacity.is_some(), "no capacity");
                }
            } else {
                for _ in 0..n {
                    let t = Instant::now();
                    let response = direct.get_capacity(pb::GetCapacityRequest {}).await?;
                    via_direct.push(t.elapsed().as_micros() as u64);
                    anyhow::ensure!(response.get_ref().capacity.is_some(), "no capacity");
                }
            }
        }
    }
    report_pair("unary", &mut via_tunnel, &mut via_direct);
    agent.print_log_summary();
    Ok(())
}

async fn phase_telemetry(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    println!(
        "== telemetry: one WatchHostTelemetry stream through the tunnel and one direct, interval_millis {}{}, {} s, same agent",
        args.telemetry_interval_millis,
        if args.telemetry_interval_millis == 0 { " (the agent's default)" } else { "" },
        args.telemetry_seconds
    );
    let (agent, market) = agent_with_tunnel(setup, "telemetry").await?;
    let tunnel = market.state.tunnel(0).context("no tunnel")?;
    let mut direct = AgentClient::new(agent.direct_channel(setup).await?);
    let request = pb::WatchHostTelemetryRequest {
        interval_millis: args.telemetry_interval_millis,
    };
    let mut via_tunnel = tunnel
        .open(WATCH_TELEMETRY, &request.encode_to_vec())
        .map_err(anyhow::Error::from)?;
    let mut via_direct = direct.watch_host_telemetry(request).await?.into_inner();
    // Warm-up: the first sample on both.
    let warm = Instant::now() + Duration::from_secs(3);
    let end = warm + Duration::from_secs(args.telemetry_seconds);
    let tunnel_task = async {
        let mut lags = BTreeMap::new();
        while let Ok(Some(message)) = via_tunnel.message().await {
            let message = pb::WatchHostTelemetryResponse::decode(message)?;
            if let Some(lag) = lag_micros(message.sample.as_ref()) {
                if Instant::now() > warm {
                    lags.insert(message.sample.map_or(0, |s| s.sequence), lag);
                }
            }
            if Instant::now() > end {
                break;
            }
        }
        Ok::<_, anyhow::Error>(lags)
    };
    let direct_task = async {
        let mut lags = BTreeMap::new();
        while let Ok(Some(message)) = via_direct.message().await {
            if let Some(lag) = lag_micros(message.sample.as_ref()) {
                if Instant::now() > warm {
                    lags.insert(message.sample.map_or(0, |s| s.sequence), lag);
                }
            }
            if Instant::now() > end {
                break;
            }
        }
        Ok::<_, anyhow::Error>(lags)
    };
    let (tunnel_lags, direct_lags) = tokio::try_join!(tunnel_task, direct_task)?;
    let mut paired: Vec<i64> = tunnel_lags
        .iter()
        .filter_map(|(seq, t)| direct_lags.get(seq).map(|d| *t as i64 - *d as i64))
        .collect();
    paired.sort_unstable();
    let mut t: Vec<u64> = tunnel_lags.values().copied().collect();
    let mut d: Vec<u64> = direct_lags.values().copied().collect();
    report_pair("lag", &mut t, &mut d);
    if !paired.is_empty() {
        println!(
            "  lag      paired per sample (tunnel - direct, {} samples): median {:+.3} ms, min {:+.3}, max {:+.3}",
            paired.len(),
            paired[paired.len() / 2] as f64 / 1000.0,
            paired[0] as f64 / 1000.0,
            paired[paired.len() - 1] as f64 / 1000.0
        );
    }
    agent.print_log_summary();
    Ok(())
}

/// What the stream holders record.
#[derive(Default)]
struct StreamStats {
    started: AtomicUsize,
    failed: AtomicUsize,
    recording: AtomicBool,
    messages: AtomicU64,
    lags: Mutex<Vec<u64>>,
    per_stream: Mutex<Vec<u64>>,
}

async fn measure_streams(
    what: &str,
    agent: &Agent,
    stats: &Arc<StreamStats>,
    args: &Args,
    rss_before: u64,
) -> anyhow::Result<()> {
    // Served = every stream has had its first sample.
    let served = wait_served(stats, args.streams, Duration::from_secs(60)).await;
    if served < args.streams {
        println!(
            "  {what}: only {served} of {} streams had a sample after 60 s",
            args.streams
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ticks0, _) = proc_usage(agent.pid())?;
    let t0 = Instant::now();
    lock(&stats.per_stream).iter_mut().for_each(|n| *n = 0);
    stats.recording.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(args.streams_seconds)).await;
    stats.recording.store(false, Ordering::Release);
    let elapsed = t0.elapsed().as_secs_f64();
    let (ticks1, rss_after) = proc_usage(agent.pid())?;
    let mut lags = lock(&stats.lags).clone();
    lags.sort_unstable();
    let per_stream = lock(&stats.per_stream).clone();
    let silent = per_stream.iter().filter(|n| **n == 0).count();
    let expected = args.streams as f64 * elapsed * 1000.0 / args.interval_millis as f64;
    println!(
        "  {what:<6} streams open {} (failed {}); in {elapsed:.1} s: {} messages ({:.1}% of expected), streams without a message {silent}",
        stats.started.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        lags.len(),
        lags.len() as f64 * 100.0 / expected,
    );
    println!(
        "  {what:<6} lag p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms; agent cpu {:.1}% of one core",
        percentile(&lags, 50.0),
        percentile(&lags, 99.0),
        percentile(&lags, 100.0),
        (ticks1 - ticks0) as f64 / 100.0 / elapsed * 100.0
    );
    println!(
        "  {what:<6} agent RSS {:.1} MiB before, {:.1} MiB with the streams: {:.1} KiB per open stream",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after as f64 - rss_before as f64) / args.streams as f64
    );
    Ok(())
}

fn record(stats: &StreamStats, index: usize, sample: Option<&pb::HostSample>) {
    let Some(lag) = lag_micros(sample) else {
        return;
    };
    lock(&stats.per_stream)[index] += 1;
    if stats.recording.load(Ordering::Acquire) {
        stats.messages.fetch_add(1, Ordering::Relaxed);
        lock(&stats.lags).push(lag);
    }
}

/// Opens `args.streams` WatchHostTelemetry streams on `tunnel`, each read by its own task.
fn open_tunnel_streams(
    tunnel: &Arc<Tunnel>,
    args: &Args,
    stats: &Arc<StreamStats>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let request = pb::WatchHostTelemetryRequest {
        interval_millis: args.interval_millis,
    }
    .encode_to_vec();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.streams {
        let mut call = tunnel
            .open(WATCH_TELEMETRY, &request)
            .map_err(anyhow::Error::from)?;
        let stats = stats.clone();
        tasks.spawn(async move {
            stats.started.fetch_add(1, Ordering::Relaxed);
            loop {
                match call.message().await {
                    Ok(Some(bytes)) => {
                        if let Ok(m) = pb::WatchHostTelemetryResponse::decode(bytes) {
                            record(&stats, i, m.sample.as_ref());
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        if stats.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("tunnel stream {i}: {status}");
                        }
                        break;
                    }
                }
            }
        });
    }
    Ok(tasks)
}

/// Opens `args.streams` direct WatchHostTelemetry streams over `channels`.
fn open_direct_streams(
    channels: &[Channel],
    args: &Args,
    stats: &Arc<StreamStats>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.streams {
        let mut client = AgentClient::new(channels[i % channels.len()].clone());
        let stats = stats.clone();
        let request = pb::WatchHostTelemetryRequest {
            interval_millis: args.interval_millis,
        };
        tasks.spawn(async move {
            let mut stream = match client.watch_host_telemetry(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    if stats.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("direct stream {i}: {status}");
                    }
                    return;
                }
            };
            stats.started.fetch_add(1, Ordering::Relaxed);
            while let Ok(Some(m)) = stream.message().await {
                record(&stats, i, m.sample.as_ref());
            }
        });
    }
    tasks
}

/// Waits until every stream has had a sample (or failed); the number served.
async fn wait_served(stats: &StreamStats, n: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let served = lock(&stats.per_stream).iter().filter(|n| **n > 0).count();
        if served + stats.failed.load(Ordering::Relaxed) >= n || Instant::now() > deadline {
            return served;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn phase_streams(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    println!(
        "== streams: {} WatchHostTelemetry streams at {} ms on one tunnel, then {} direct (over {} connections), fresh agents",
        args.streams, args.interval_millis, args.streams, args.direct_connections
    );
    {
        let (agent, market) = agent_with_tunnel(setup, "streams-tunnel").await?;
        let tunnel = market.state.tunnel(0).context("no tunnel")?;
        // One call so the service's lazy state is warm on both sides.
        tunnel
            .unary::<_, pb::GetCapacityResponse>(GET_CAPACITY, &pb::GetCapacityRequest {})
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_before = rss_kb(agent.pid())?;
        let stats = Arc::new(StreamStats {
            per_stream: Mutex::new(vec![0; args.streams]),
            ..StreamStats::default()
        });
        let mut tasks = open_tunnel_streams(&tunnel, args, &stats)?;
        measure_streams("tunnel", &agent, &stats, args, rss_before).await?;
        // Cancel them all, then check that the agent closed them and the tunnel still serves;
        // then open and cancel them again (memory that grows cycle after cycle is a leak).
        for cycle in 1..=args.streams_cycles.max(1) {
            if cycle > 1 {
                let stats = Arc::new(StreamStats {
                    per_stream: Mutex::new(vec![0; args.streams]),
                    ..StreamStats::default()
                });
                tasks = open_tunnel_streams(&tunnel, args, &stats)?;
                let served = wait_served(&stats, args.streams, Duration::from_secs(60)).await;
                anyhow::ensure!(
                    served >= args.streams,
                    "cycle {cycle}: {served} streams served"
                );
            }
            let open = agent.metric("fog_market_tunnel_streams")?.0;
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            tokio::time::sleep(Duration::from_secs(1)).await;
            let left = agent.metric("fog_market_tunnel_streams")?.0;
            let after: pb::GetCapacityResponse = tunnel
                .unary(GET_CAPACITY, &pb::GetCapacityRequest {})
                .await?;
            anyhow::ensure!(after.capacity.is_some(), "no capacity after the streams");
            println!(
                "  tunnel cycle {cycle}: {open} streams open at the agent, {} after the market cancelled them all (opened in total {}); the tunnel still serves; agent RSS {:.1} MiB",
                left,
                agent.metric("fog_market_tunnel_streams_opened_total")?.0,
                rss_kb(agent.pid())? as f64 / 1024.0
            );
        }
        agent.print_log_summary();
    }
    {
        let agent = Agent::start(setup, "streams-direct", &[]).await?;
        let mut channels = Vec::new();
        for _ in 0..args.direct_connections.max(1) {
            channels.push(agent.direct_channel(setup).await?);
        }
        AgentClient::new(channels[0].clone())
            .get_capacity(pb::GetCapacityRequest {})
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_before = rss_kb(agent.pid())?;
        let stats = Arc::new(StreamStats {
            per_stream: Mutex::new(vec![0; args.streams]),
            ..StreamStats::default()
        });
        let mut tasks = open_direct_streams(&channels, args, &stats);
        measure_streams("direct", &agent, &stats, args, rss_before).await?;
        for cycle in 1..=args.streams_cycles.max(1) {
            if cycle > 1 {
                let stats = Arc::new(StreamStats {
                    per_stream: Mutex::new(vec![0; args.streams]),
                    ..StreamStats::default()
                });
                tasks = open_direct_streams(&channels, args, &stats);
                let served = wait_served(&stats, args.streams, Duration::from_secs(60)).await;
                anyhow::ensure!(
                    served >= args.streams,
                    "cycle {cycle}: {served} streams served"
                );
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!(
                "  direct cycle {cycle}: {} streams opened and cancelled; agent RSS {:.1} MiB",
                args.streams,
                rss_kb(agent.pid())? as f64 / 1024.0
            );
        }
        agent.print_log_summary();
    }
    Ok(())
}

async fn phase_tunnels(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let k = args.idle_tunnels;
    println!("== tunnels: memory per idle tunnel, {k} tunnels (one endpoint listed {k} times)");
    let port = free_port()?;
    let agent = Agent::start(setup, "tunnels", &vec![Market::url(port); k]).await?;
    // The market is down: every loop fails and backs off.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kb(agent.pid())?;
    let fds_before = fd_count(agent.pid());
    let t = Instant::now();
    let market = Market::start(setup, port, false, false)?;
    let all = market.state.wait_up(k, Duration::from_secs(120)).await;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kb(agent.pid())?;
    println!(
        "  {} of {k} tunnels up {:.1} s after the market started{}",
        market.state.up(),
        took.as_secs_f64(),
        if all { "" } else { " (timed out)" }
    );
    println!(
        "  agent RSS {:.1} MiB with no tunnel up, {:.1} MiB with {} up: {:.1} KiB per idle tunnel; fds {} -> {}",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        market.state.up(),
        (rss_after as f64 - rss_before as f64) / market.state.up().max(1) as f64,
        fds_before,
        fd_count(agent.pid())
    );
    let (up, series) = agent.metric("fog_market_tunnel_up")?;
    println!("  agent /metrics: fog_market_tunnel_up sums to {up} over {series} series");
    agent.print_log_summary();
    drop(agent);
    market.kill();
    Ok(())
}

/// Per-second histogram of `times` from `origin`, and its peak and mean over the seconds from
/// `origin` to the last one.
fn histogram(times: &[Instant], origin: Instant) -> (Vec<usize>, usize, f64) {
    let secs: Vec<usize> = times
        .iter()
        .map(|t| t.saturating_duration_since(origin).as_secs() as usize)
        .collect();
    let len = secs.iter().max().map_or(0, |m| m + 1);
    let mut buckets = vec![0usize; len];
    for s in secs {
        buckets[s] += 1;
    }
    let peak = buckets.iter().copied().max().unwrap_or(0);
    let window = times
        .iter()
        .map(|t| t.saturating_duration_since(origin))
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        .max(1.0);
    (buckets, peak, times.len() as f64 / window)
}

async fn phase_storm(setup: &Setup, args: &Args) -> anyhow::Result<()> {
    let n = args.storm_tunnels;
    println!(
        "== storm: {n} tunnels (one endpoint listed {n} times, default reconnect settings) against a market that restarts"
    );
    let port = free_port()?;
    let agent = Agent::start(setup, "storm", &vec![Market::url(port); n]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kb(agent.pid())?;
    let t = Instant::now();
    let mut market = Market::start(setup, port, false, true)?;
    if !market.state.wait_up(n, Duration::from_secs(180)).await {
        println!(
            "  only {} of {n} tunnels came up within 180 s of the market's start",
            market.state.up()
        );
        agent.print_log_summary();
        bail!("not every tunnel came up");
    }
    let up_after = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_up = rss_kb(agent.pid())?;
    println!(
        "  all {n} up {:.1} s after the market started ({} accepts); agent RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per idle tunnel; agent fds {}",
        up_after.as_secs_f64(),
        lock(&market.state.accepts).len(),
        rss_before as f64 / 1024.0,
        rss_up as f64 / 1024.0,
        (rss_up as f64 - rss_before as f64) / n as f64,
        fd_count(agent.pid())
    );
    for round in 1..=args.storm_rounds.max(1) {
        let hold = if round == 1 {
            args.storm_hold_secs
        } else {
            args.storm_rehold_secs
        };
        // Every tunnel has been up at least `hold`: the last came up when `wait_up` returned.
        let last_up = lock(&market.state.ready_times)
            .last()
            .copied()
            .unwrap_or_else(Instant::now);
        tokio::time::sleep_until((last_up + Duration::from_secs(hold)).into()).await;
        let (ticks0, _) = proc_usage(agent.pid())?;
        let killed = Instant::now();
        // Tunnels up at least the agent's default healthy_after_millis get the spread.
        let healthy = lock(&market.state.ready_times)
            .iter()
            .filter(|t| killed.duration_since(**t) >= HEALTHY_AFTER)
            .count();
        market.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fds_down = fd_count(agent.pid());
        tokio::time::sleep(Duration::from_secs(args.storm_down_secs.saturating_sub(1))).await;
        let restarted = Instant::now();
        market = Market::start(setup, port, false, true)?;
        let all = market
            .state
            .wait_up(n, Duration::from_secs(args.storm_timeout_secs))
            .await;
        let back = restarted.elapsed();
        let (ticks1, _) = proc_usage(agent.pid())?;
        let accepts = lock(&market.state.accepts).clone();
        let ready = lock(&market.state.ready_times).clone();
        let (buckets, peak, mean) = histogram(&accepts, restarted);
        println!(
            "  round {round}: stopped {hold} s after the last tunnel came up; {healthy} of {n} up for {} s or more (healthy); market down {} s (agent fds 1 s after the stop: {fds_down})",
            HEALTHY_AFTER.as_secs(),
            args.storm_down_secs
        );
        println!(
            "  round {round}: {} of {n} back {:.1} s after the restart ({:.1} s after the stop){}; {} accepts, {} tunnels ended again",
            market.state.up(),
            back.as_secs_f64(),
            (restarted - killed).as_secs_f64() + back.as_secs_f64(),
            if all { "" } else { " (timed out)" },
            accepts.len(),
            market.state.ended.load(Ordering::Relaxed),
        );
        if let (Some(first), Some(last)) = (ready.first(), ready.last()) {
            println!(
                "  round {round}: first back {:.2} s, last back {:.2} s after the restart",
                first.saturating_duration_since(restarted).as_secs_f64(),
                last.saturating_duration_since(restarted).as_secs_f64()
            );
        }
        println!(
            "  round {round}: accepts/s peak {peak}, mean {mean:.1} over the reconnect window: peak/mean {:.2}; agent cpu {:.1} s",
            peak as f64 / mean,
            (ticks1 - ticks0) as f64 / 100.0
        );
        println!(
            "  round {round}: accepts per second after the restart: {}",
            buckets
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        if !all {
            break;
        }
    }
    agent.print_log_summary();
    drop(agent);
    market.kill();
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nofile = raise_nofile();
    let temp = tempfile::tempdir()?;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_owned(),
    };
    let certs = dir.join("certs");
    let status = Command::new(&args.agent)
        .args(["dev-certs", "--out"])
        .arg(&certs)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "fog-agent dev-certs failed");
    let setup = Setup {
        agent_bin: args.agent.clone(),
        dir: dir.clone(),
        certs,
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "tunnel_bench: nproc {}, load {}, open-file limit {nofile}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let started = Instant::now();
    for phase in &args.phases {
        let t = Instant::now();
        match phase.as_str() {
            "latency" => phase_latency(&setup, &args).await?,
            "telemetry" => phase_telemetry(&setup, &args).await?,
            "streams" => phase_streams(&setup, &args).await?,
            "tunnels" => phase_tunnels(&setup, &args).await?,
            "storm" => phase_storm(&setup, &args).await?,
            other => bail!("unknown phase {other:?}"),
        }
        println!("  ({phase}: {:.0} s)", t.elapsed().as_secs_f64());
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "tunnel_bench: done in {:.0} s, load {}{}",
        started.elapsed().as_secs_f64(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        args.keep
            .as_ref()
            .map(|d| format!(", logs in {}", d.display()))
            .unwrap_or_default()
    );
    Ok(())
}
