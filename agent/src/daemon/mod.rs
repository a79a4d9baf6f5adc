//! The composition root: builds the agent's parts from the config, wires them together, serves
//! the gRPC API (`fog.agent.v1.Agent`, standard health checking, server reflection) on
//! mutual-TLS TCP listeners and the local admin unix socket plus `/metrics`, and shuts it all
//! down.
//!
//! [`DaemonOptions::for_host`] makes the real parts (the benchmark suite, the TPM at
//! `[tpm] tcti`, NVML, the job runner over runc); tests replace any of them. [`start`] binds
//! every listener and serves at once (the inventory is collected in the background; the first
//! GetInventory waits for it). [`RunningDaemon::shutdown`] stops accepting, ends the streams and
//! waits at most `[api] shutdown_grace_millis`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::Server;

use crate::api::{listener, tls, Door, Shared};
use crate::attest::{AttestationStats, Attestor, RecordingAttestor, TpmAttestor};
use crate::bench::{BenchmarkBackend, SuiteBackend};
use crate::capacity::{CapacityLedger, Totals};
use crate::config::Config;
use crate::fsroot::FsRoot;
use crate::gpu::{GpuAccounting, GpuTelemetrySource, NvmlTelemetry};
use crate::image::ImageStore;
use crate::inventory::cache::{InventoryCache, InventorySource};
use crate::inventory::Inventory;
use crate::telemetry::{GpuList, SystemCollector, TelemetryHub};

/// HTTP/2 keepalive pings, so dead peers free their streams.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config has problems (each names its key).
    #[error("invalid config: {}", .0.join("; "))]
    Config(Vec<String>),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The server's TLS configuration could not be built from its files.
    #[error(transparent)]
    ServerTls(#[from] tls::ServerTlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {what}")]
    Bind {
        /// Address or socket path.
        what: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptor sets.
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The market link could not start (its TLS files or endpoints).
    #[error(transparent)]
    Market(#[from] crate::market::MarketError),
    /// The job runner could not start (state store, jobs dir, recovery).
    #[error("cannot start the job runner")]
    Jobs(#[source] crate::jobs::JobError),
    /// The usage receipts' issuer could not start (its state database).
    #[error("cannot start the usage receipts")]
    Receipts(#[source] crate::receipts::ReceiptError),
    /// The image store could not be opened.
    #[error("cannot open the image store")]
    Images(#[source] crate::image::ImageError),
    /// The state dir cannot be made, tightened or written (see [`prepare_state_dir`]).
    #[error("state dir {path}: cannot {what}")]
    StateDir {
        /// The state dir.
        path: PathBuf,
        /// What failed.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// Makes the state dir ready before anything is put in it: created mode 0700 when missing, an
/// existing one (made by systemd, the package, an operator or an older agent) tightened to 0700
/// (it holds the attestation key, the database and images whose files may be setuid), and
/// proved writable by creating, syncing and removing a file, so a read-only or immutable dir
/// fails the start with the OS's reason instead of later requests. Exit code 1 (`serve`): the
/// dir may become writable without a config change.
pub fn prepare_state_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |what: &'static str| {
        move |source| DaemonError::StateDir {
            path: dir.to_owned(),
            what,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail("create it"))?;
    let meta = std::fs::metadata(dir).map_err(fail("read its metadata"))?;
    if !meta.is_dir() {
        return Err(fail("use it")(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(fail("set its mode to 0700"))?;
        tracing::info!(dir = %dir.display(), old_mode = format!("{mode:o}"), "state dir tightened to 0700");
    }
    let probe = dir.join(format!(".write-check-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut file| {
            file.write_all(b"fog-agent\n")?;
            file.sync_all()
        });
    // Removed whether the write worked or not (a full disk may let the create through).
    let removed = std::fs::remove_file(&probe);
    written.map_err(fail("write to it"))?;
    removed.map_err(fail("remove a file in it"))?;
    Ok(())
}

/// What the job runner is built from besides `[jobs]` (None in [`DaemonOptions::jobs`]: jobs
/// disabled, the job RPCs answer UNIMPLEMENTED).
#[derive(Clone)]
pub struct JobsOptions {
    /// The agent executable, run as `<exe> internal job-shim ...` per job.
    pub shim_exe: PathBuf,
    /// The image store jobs run from (and ImportImage imports into).
    pub images: Arc<crate::image::ImageStore>,
    /// The OCI runtime; None = runc at `[jobs] runtime`.
    pub runtime: Option<Arc<dyn crate::jobs::JobRuntime>>,
}

/// What the daemon is built from besides its config: every part a test may replace.
#[derive(Clone)]
pub struct DaemonOptions {
    /// Benchmarks: the cache and the runner.
    pub benchmarks: Arc<dyn BenchmarkBackend>,
    /// TPM attestation and enrollment.
    pub attestation: Arc<dyn Attestor>,
    /// GPU telemetry for the host sampler.
    pub gpu_telemetry: Arc<dyn GpuTelemetrySource>,
    /// Per-process GPU accounting for jobs' GPU-seconds.
    pub gpu_accounting: Arc<dyn GpuAccounting>,
    /// Where the inventory comes from.
    pub inventory_source: InventorySource,
    /// Root the telemetry sampler reads `/proc` below.
    pub fs: FsRoot,
    /// The job runner's parts; None = jobs disabled.
    pub jobs: Option<JobsOptions>,
    /// The TPM identity that signs usage receipts and quotes them (with jobs and `[receipts]
    /// enabled`); None = no receipts.
    pub receipt_keys: Option<Arc<dyn crate::receipts::ReceiptKeys>>,
}

impl std::fmt::Debug for JobsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsOptions")
            .field("shim_exe", &self.shim_exe)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DaemonOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonOptions")
            .field("fs", &self.fs)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl DaemonOptions {
    /// The live host's parts, as `fog-agent serve` runs them: the benchmark suite (children of
    /// `exe`, a background run per `[bench] run_on_start`), the TPM at `[tpm] tcti`, one NVML
    /// session for host telemetry and jobs' GPU accounting, and the job runner (shims are `exe`)
    /// over the image store in the state dir.
    pub fn for_host(config: &Config, exe: PathBuf) -> Result<Self, DaemonError> {
        let tcti: fog_tpm::tcti::Tcti = config
            .tpm
            .tcti
            .parse()
            .map_err(|e| DaemonError::Config(vec![format!("tpm.tcti: {e}")]))?;
        let cdi_dirs = config.jobs.cdi_spec_dirs.clone();
        let inventory_source: InventorySource = Arc::new(move || {
            let mut inventory = crate::inventory::collect_from(FsRoot::host());
            // The inventory reads the standard CDI dirs; the jobs read the configured ones.
            let standard = crate::cdi::DEFAULT_SPEC_DIRS.map(std::path::PathBuf::from);
            if cdi_dirs[..] != standard[..] {
                if let Some(gpus) = inventory.gpus.data.as_mut() {
                    let mut notes = crate::inventory::Notes::default();
                    crate::inventory::gpu::annotate_cdi(
                        gpus,
                        &FsRoot::host(),
                        &cdi_dirs,
                        &mut notes,
                    );
                    inventory
                        .gpus
                        .notes
                        .extend(notes.as_slice().iter().cloned());
                }
            }
            inventory
        });
        let images = ImageStore::open(&config.state.dir)
            .map_err(DaemonError::Images)?
            .with_limits(config.into());
        let nvml = Arc::new(NvmlTelemetry::system());
        Ok(Self {
            benchmarks: Arc::new(SuiteBackend::new(
                config.state.dir.clone(),
                exe.clone(),
                inventory_source.clone(),
                config.bench.run_on_start,
            )),
            attestation: Arc::new(TpmAttestor::new(tcti.clone(), config.state.dir.clone())),
            gpu_telemetry: nvml.clone(),
            gpu_accounting: nvml,
            inventory_source,
            fs: FsRoot::host(),
            jobs: Some(JobsOptions {
                shim_exe: exe,
                images: Arc::new(images),
                runtime: None,
            }),
            receipt_keys: Some(Arc::new(crate::attest::identity::TpmIdentity::new(
                tcti,
                config.state.dir.clone(),
            ))),
        })
    }
}

/// A started daemon.
#[derive(Debug)]
pub struct RunningDaemon {
    tcp_addrs: Vec<SocketAddr>,
    unix_socket: Option<PathBuf>,
    shutdown_tx: watch::Sender<bool>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    shared: Arc<Shared>,
    health: tonic_health::server::HealthReporter,
    grace: Duration,
    metrics: Option<crate::metrics::MetricsServer>,
    market: crate::market::MarketLink,
}

impl RunningDaemon {
    /// The bound TCP addresses (with the real port when the config said port 0).
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The unix socket path, if one is served.
    pub fn unix_socket(&self) -> Option<&Path> {
        self.unix_socket.as_deref()
    }

    /// The `/metrics` address, when `[metrics] enabled`.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(crate::metrics::MetricsServer::local_addr)
    }

    /// The market link's tunnels, one per `[market] endpoints` entry.
    pub fn market_links(&self) -> Vec<fog_tunnel::LinkStatus> {
        self.market.statuses()
    }

    /// What the API answers from (capacity ledger, job runner, ...).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, ends open streams, and waits for connections to finish, at most the
    /// grace period; returns whether everything ended within it.
    pub async fn shutdown(self) -> bool {
        tracing::info!(grace_ms = self.grace.as_millis() as u64, "shutting down");
        crate::api::routes::set_not_serving(&self.health).await;
        if let Some(metrics) = self.metrics {
            metrics.stop();
        }
        // Ignored error: no receivers means nothing is left to tell.
        let _ = self.shutdown_tx.send(true);
        self.shared.telemetry.close();
        if let Some(jobs) = &self.shared.jobs {
            // Jobs keep running under their shims; a restarted agent finds them again.
            jobs.shutdown();
        }
        if let Some(receipts) = self.shared.receipts.clone() {
            // Drafts stay in the database; the next run signs them.
            let _ = tokio::task::spawn_blocking(move || receipts.shutdown()).await;
        }
        // Tunnels refuse new streams at once and get the grace to finish their open ones.
        let market = tokio::spawn(self.market.shutdown(self.grace));
        let mut servers = self.servers;
        let drained = tokio::time::timeout(self.grace, async {
            for server in &mut servers {
                match server.await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(error = %err, "listener ended with an error"),
                    Err(err) => tracing::warn!(error = %err, "listener task failed"),
                }
            }
        })
        .await
        .is_ok();
        if !drained {
            tracing::warn!("grace period over; closing remaining connections");
            for server in &servers {
                server.abort();
            }
        }
        // Bounded by the grace inside.
        let _ = market.await;
        if let Some(path) = &self.unix_socket {
            if let Err(err) = std::fs::remove_file(path) {
                tracing::debug!(path = %path.display(), error = %err, "socket not removed");
            }
        }
        drained
    }
}

/// Starts the daemon: telemetry sampler, capacity ledger, background inventory collection and
/// every listener.
pub async fn start(config: &Config, options: DaemonOptions) -> Result<RunningDaemon, DaemonError> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(DaemonError::Config(
            problems.iter().map(ToString::to_string).collect(),
        ));
    }
    prepare_state_dir(&config.state.dir)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut options = options;
    let attestation_stats = Arc::new(AttestationStats::default());
    options.attestation = Arc::new(RecordingAttestor::new(
        options.attestation.clone(),
        attestation_stats.clone(),
    ));
    let shared = Arc::new(build_shared(config, &options, shutdown_rx).await?);

    // The API is up before the inventory is: the first GetInventory waits for this collection.
    let warmup = shared.clone();
    tokio::spawn(async move {
        if let Err(err) = warmup.inventory.get(false).await {
            tracing::error!(error = %crate::inventory::error_chain(&err), "initial inventory collection failed");
        }
    });

    let (health, health_service) = crate::api::routes::health().await;
    let max_message = usize::try_from(config.api.max_message_bytes.0).unwrap_or(usize::MAX);
    let routes = |door: Door| -> Result<Routes, DaemonError> {
        crate::api::routes::routes(shared.clone(), door, max_message, health_service.clone())
            .map_err(DaemonError::Reflection)
    };

    // The TLS files and the TCP listeners before anything serves: a bad file or an address in
    // use fails the start.
    let server_tls = if config.api.listen.is_empty() || config.api.insecure_loopback {
        None
    } else {
        Some(Arc::new(tls::ServerTls::load(tls::TlsFiles {
            cert: config.api.tls_cert.clone(),
            key: config.api.tls_key.clone(),
            client_ca: config.api.client_ca.clone(),
            crl: config.api.crl_file().map(Path::to_owned),
        })?))
    };
    let limits = connection_limits(config);
    let mut tcp_listeners = Vec::new();
    for addr in &config.api.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind {
                what: addr.to_string(),
                source,
            })?;
        tcp_listeners.push((*addr, listener));
    }
    let listener_stats: ListenerStatsList = Arc::default();
    // Dials out in the background: an unreachable market never delays or fails the start.
    let market = crate::market::MarketLink::start(config, routes(Door::Tunnel)?)?;
    let market_links: crate::api::MarketLinks = Arc::new(market.status_source());
    // Set once, here, on a Shared no one else has written.
    let _ = shared.market.set(market_links.clone());

    // First, so a metrics address in use fails the start before any gRPC listener runs.
    let metrics = if config.metrics.enabled {
        let sources = crate::metrics::Sources::new(crate::metrics::Handles {
            telemetry: shared.telemetry.clone(),
            capacity: shared.capacity.clone(),
            inventory: shared.inventory.clone(),
            benchmarks: shared.benchmarks.clone(),
            attestation: attestation_stats,
            jobs: shared
                .jobs
                .clone()
                .map(|jobs| jobs as Arc<dyn crate::jobs::JobMetricsSource>),
            connections: Some(connection_source(
                listener_stats.clone(),
                server_tls.clone(),
            )),
            market: Some(market_links),
            receipts: shared.receipts.as_ref().map(|r| r.stats()),
        });
        Some(crate::metrics::server::start(&config.metrics, sources).await?)
    } else {
        None
    };

    let mut servers = Vec::new();
    let mut tcp_addrs = Vec::new();
    for (addr, listener) in tcp_listeners {
        let local = listener.local_addr().map_err(|source| DaemonError::Bind {
            what: addr.to_string(),
            source,
        })?;
        let mut builder = server_builder(config);
        let shutdown = shutdown_tx.subscribe();
        let signal = crate::api::shutting_down(shutdown_tx.subscribe());
        let bind_err = |source| DaemonError::Bind {
            what: addr.to_string(),
            source,
        };
        let (door, stats) = match &server_tls {
            None => {
                tracing::warn!(
                    addr = %local,
                    "INSECURE: plaintext gRPC without client authentication on loopback; \
                     every local process is admin (api.insecure_loopback = true, development only)"
                );
                let (incoming, stats) =
                    listener::serve(listener, limits, listener::Plaintext, shutdown)
                        .map_err(bind_err)?;
                let router = builder.add_routes(routes(Door::LocalAdmin)?);
                servers.push(tokio::spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                }));
                (Door::LocalAdmin, stats)
            }
            Some(server_tls) => {
                let handshake = listener::TlsHandshake(server_tls.clone());
                let (incoming, stats) =
                    listener::serve(listener, limits, handshake, shutdown).map_err(bind_err)?;
                let router = builder.add_routes(routes(Door::Mtls)?);
                servers.push(tokio::spawn(async move {
                    router.serve_with_incoming_shutdown(incoming, signal).await
                }));
                (Door::Mtls, stats)
            }
        };
        listener_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stats);
        tracing::info!(addr = %local, mtls = door == Door::Mtls, "listening");
        tcp_addrs.push(local);
    }
    {
        // Registered before `start` returns, so a SIGHUP from then on reloads (or, without a
        // mutual-TLS listener, is logged) and never takes the default action, which ends the
        // process: a unit's `ExecReload` is safe whatever the config.
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGHUP; TLS files reload only when they change");
                None
            }
        };
        tokio::spawn(reload_tls(
            server_tls.clone(),
            config.api.tls_reload_interval(),
            hangup,
            shutdown_tx.subscribe(),
        ));
    }

    let unix_socket = config.api.unix_socket().map(Path::to_owned);
    if let Some(path) = &unix_socket {
        let listener = bind_unix_socket(path)?;
        let router = server_builder(config).add_routes(routes(Door::LocalAdmin)?);
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let signal = crate::api::shutting_down(shutdown_tx.subscribe());
        servers.push(tokio::spawn(async move {
            router.serve_with_incoming_shutdown(incoming, signal).await
        }));
        tracing::info!(path = %path.display(), "listening on the local admin socket");
    }

    Ok(RunningDaemon {
        tcp_addrs,
        unix_socket,
        shutdown_tx,
        servers,
        shared,
        health,
        grace: config.api.shutdown_grace(),
        metrics,
        market,
    })
}

/// The TCP listeners' counters, filled as they are bound (the metrics endpoint starts first).
type ListenerStatsList = Arc<Mutex<Vec<Arc<listener::ListenerStats>>>>;

/// The connection limits of each TCP listener: `[api]`'s, capped so that all listeners
/// together stay within the open-file limit (raised to its hard limit here) less
/// `[api] fd_reserve`.
fn connection_limits(config: &Config) -> listener::Limits {
    let api = &config.api;
    let budget = listener::raise_fd_limit(api.fd_reserve);
    let listeners = u64::try_from(api.listen.len().max(1)).unwrap_or(1);
    let configured = listener::Limits {
        max_connections: api.max_connections,
        max_connections_per_peer: api.max_connections_per_peer,
        max_pending_handshakes: api.max_pending_handshakes,
        max_pending_handshakes_per_peer: api.max_pending_handshakes_per_peer,
        handshake_timeout: api.handshake_timeout(),
    };
    let limits = configured.capped(budget.for_connections / listeners);
    if limits != configured && !api.listen.is_empty() {
        tracing::warn!(
            fd_limit = budget.limit,
            fd_reserve = api.fd_reserve,
            listeners,
            max_connections = limits.max_connections,
            "connection limits lowered to fit the open-file limit"
        );
    }
    tracing::debug!(fd_limit = budget.limit, ?limits, "connection limits");
    limits
}

/// What `/metrics` reads of the listeners and the TLS reloads.
fn connection_source(
    stats: ListenerStatsList,
    server_tls: Option<Arc<tls::ServerTls>>,
) -> crate::metrics::ConnectionSource {
    Arc::new(move || {
        let listeners = stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|stats| {
                let counts = stats.counts();
                crate::metrics::ListenerConnections {
                    listener: counts.addr.to_string(),
                    open: counts.open,
                    pending: counts.pending,
                    max_connections: u64::from(counts.limits.max_connections),
                    closed: counts
                        .outcomes
                        .iter()
                        .map(|(outcome, n)| (outcome.as_str(), *n))
                        .collect(),
                }
            })
            .collect();
        let (ok, failed) = server_tls
            .as_ref()
            .map_or((0, 0), |tls| tls.reload_counts());
        crate::metrics::ApiConnections {
            listeners,
            tls_reloads_ok: ok,
            tls_reloads_failed: failed,
        }
    })
}

/// Reloads the TLS files when they change (checked every `interval`) and on SIGHUP, until the
/// daemon shuts down. A failed reload keeps the previous configuration. Without a mutual-TLS
/// listener (`server_tls` None) a SIGHUP has nothing to reload and is only logged.
async fn reload_tls(
    server_tls: Option<Arc<tls::ServerTls>>,
    interval: Option<Duration>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    shutdown: watch::Receiver<bool>,
) {
    let mut ticker = interval.filter(|_| server_tls.is_some()).map(|every| {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let stop = crate::api::shutting_down(shutdown);
    tokio::pin!(stop);
    loop {
        let forced = tokio::select! {
            () = &mut stop => return,
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
            Some(_) = async { Some(ticker.as_mut()?.tick().await) } => false,
        };
        let Some(checked) = server_tls.clone() else {
            tracing::info!("SIGHUP: no mutual-TLS listener, nothing to reload");
            continue;
        };
        let result = tokio::task::spawn_blocking(move || {
            if forced {
                checked.reload().map(|()| true)
            } else {
                checked.reload_if_changed()
            }
        })
        .await;
        match result {
            Ok(Ok(true)) => tracing::info!(sighup = forced, "TLS files reloaded"),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => tracing::error!(
                error = %crate::inventory::error_chain(&err),
                "cannot reload the TLS files; new connections keep the previous ones"
            ),
            Err(err) => tracing::error!(error = %err, "TLS reload task failed"),
        }
    }
}

/// The per-listener server settings: stream limit per connection, unary timeout, keepalive.
fn server_builder(config: &Config) -> Server {
    Server::builder()
        .max_concurrent_streams(config.api.max_concurrent_streams)
        .timeout(config.api.request_timeout())
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// The state every listener shares; the sampler is spawned here.
async fn build_shared(
    config: &Config,
    options: &DaemonOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Shared, DaemonError> {
    let telemetry = TelemetryHub::new(
        config.telemetry.min_interval(),
        config.telemetry.queue_depth,
        config.telemetry.max_subscribers,
    );
    let gpus = GpuList::default();
    let collector = SystemCollector::new(
        options.fs.clone(),
        gpus.clone(),
        options.gpu_telemetry.clone(),
    );
    tokio::spawn(telemetry.clone().run(collector));

    let capacity = Arc::new(CapacityLedger::new(
        config.capacity.clone(),
        Totals {
            notes: vec!["inventory not collected yet".to_owned()],
            ..Totals::default()
        },
    ));
    let jobs = match &options.jobs {
        None => None,
        Some(jobs) => {
            let runtime: Arc<dyn crate::jobs::JobRuntime> = match jobs.runtime.clone() {
                Some(runtime) => runtime,
                None => Arc::new(crate::jobs::Runc::new(
                    config.jobs.runtime.clone(),
                    crate::jobs::manager::runtime_root(&config.jobs.dir_under(&config.state.dir)),
                )),
            };
            let setup = crate::jobs::JobSetup {
                config: config.jobs.clone(),
                state_dir: config.state.dir.clone(),
                headroom: Arc::new(crate::state::headroom::Headroom::new(
                    &config.state.dir,
                    config.state.min_free_bytes.0,
                    config.state.slack_bytes.0,
                )),
                shim_exe: jobs.shim_exe.clone(),
                runtime,
                images: jobs.images.clone(),
                gpu_accounting: options.gpu_accounting.clone(),
                fs: options.fs.clone(),
            };
            // Recovery asks the runtime about every container it left running and may wait for
            // one still starting: off the runtime's workers.
            let capacity = capacity.clone();
            let manager =
                tokio::task::spawn_blocking(move || crate::jobs::JobManager::open(setup, capacity))
                    .await
                    .map_err(|err| {
                        DaemonError::Jobs(crate::jobs::JobError::Io {
                            path: PathBuf::from("job runner recovery"),
                            source: std::io::Error::other(err.to_string()),
                        })
                    })?
                    .map_err(DaemonError::Jobs)?;
            manager.spawn_sampler().map_err(|source| {
                DaemonError::Jobs(crate::jobs::JobError::Io {
                    path: PathBuf::from("job-telemetry thread"),
                    source,
                })
            })?;
            Some(manager)
        }
    };
    let receipts = match (&jobs, &options.receipt_keys) {
        (Some(jobs), Some(keys)) if config.receipts.enabled => {
            Some(start_receipts(config, jobs.clone(), keys.clone()).await?)
        }
        (Some(_), _) if config.receipts.enabled => {
            tracing::info!("usage receipts off: this daemon has no TPM identity to sign them");
            None
        }
        _ => None,
    };
    let on_collected = {
        let capacity = capacity.clone();
        let jobs = jobs.clone();
        let state_dir = config.state.dir.clone();
        let network_bits_per_second = config.capacity.network_bits_per_second;
        let benchmarks = options.benchmarks.clone();
        let last_fingerprint = Mutex::new(None::<String>);
        let images = options.jobs.as_ref().map(|j| j.images.clone());
        move |inventory: &Inventory| {
            capacity.set_totals(Totals::from_inventory(
                inventory,
                &state_dir,
                network_bits_per_second,
            ));
            // Also counts images imported meanwhile by `fog-agent image import` (offline).
            match images.as_ref().map(|store| store.stored_bytes()) {
                Some(Ok(bytes)) => capacity.set_image_bytes(bytes),
                Some(Err(err)) => tracing::warn!(
                    error = %crate::inventory::error_chain(&err),
                    "cannot size the image store for the disk capacity"
                ),
                None => {}
            }
            if let Some(jobs) = &jobs {
                jobs.set_gpus(
                    inventory
                        .gpus
                        .get()
                        .map(|g| {
                            g.gpus
                                .iter()
                                .map(|gpu| crate::jobs::GpuIdentity {
                                    pci_bus_id: gpu.pci_bus_id.clone(),
                                    uuid: gpu.nvml.as_ref().and_then(|n| n.uuid.clone()),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                );
            }
            gpus.set(
                inventory
                    .gpus
                    .get()
                    .map(|g| g.gpus.iter().map(|gpu| gpu.pci_bus_id.clone()).collect())
                    .unwrap_or_default(),
            );
            let fingerprint = &inventory.fingerprint.value;
            let mut last = last_fingerprint
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.as_deref() != Some(fingerprint) {
                tracing::info!(fingerprint = %fingerprint, "hardware fingerprint");
                *last = Some(fingerprint.clone());
                benchmarks.on_fingerprint(fingerprint);
            }
        }
    };
    Ok(Shared {
        inventory: Arc::new(InventoryCache::new(
            options.inventory_source.clone(),
            Arc::new(on_collected),
        )),
        capacity,
        telemetry,
        benchmarks: options.benchmarks.clone(),
        attestation: options.attestation.clone(),
        shutdown,
        images: options.jobs.as_ref().map(|j| j.images.clone()),
        pull_policy: config.into(),
        jobs,
        receipts,
        max_message_bytes: usize::try_from(config.api.max_message_bytes.0).unwrap_or(usize::MAX),
        market: std::sync::OnceLock::new(),
    })
}

/// Opens the usage receipts' issuer (its database connection and chain ends, off the runtime's
/// workers) and starts its thread.
async fn start_receipts(
    config: &Config,
    jobs: Arc<crate::jobs::JobManager>,
    keys: Arc<dyn crate::receipts::ReceiptKeys>,
) -> Result<Arc<crate::receipts::Receipts>, DaemonError> {
    let receipts_config = config.receipts.clone();
    let state_dir = config.state.dir.clone();
    let receipts = tokio::task::spawn_blocking(move || {
        crate::receipts::Receipts::open(receipts_config, jobs, keys, &state_dir)
    })
    .await
    .map_err(|err| DaemonError::Receipts(crate::receipts::ReceiptError::Stored(err.to_string())))?
    .map_err(DaemonError::Receipts)?;
    receipts.spawn().map_err(|err| {
        DaemonError::Receipts(crate::receipts::ReceiptError::Stored(format!(
            "cannot start the receipts thread: {err}"
        )))
    })?;
    Ok(receipts)
}

/// Binds the admin socket: parent dir created (0700), a stale socket replaced, mode 0600.
fn bind_unix_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let bind_err = |source| DaemonError::Bind {
        what: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(bind_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(bind_err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                )));
            }
            std::fs::remove_file(path).map_err(bind_err)?;
        }
        Ok(_) => {
            return Err(bind_err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "path exists and is not a socket",
            )))
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}
