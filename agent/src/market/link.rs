//! One reconnecting tunnel per market endpoint, its status, and the shutdown of them all.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use fog_proto::grpctunnel::v1::tunnel_service_client::TunnelServiceClient;
use fog_tunnel::{
    LinkStatus, MethodTable, TunnelConfig, TunnelEnd, TunnelServer, TunnelStats, NEGOTIATE_HEADER,
    NEGOTIATE_ON,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tonic::service::Routes;
use tonic::transport::Endpoint;

use super::backoff::Backoff;
use super::connect::Connector;
use crate::api::tls::{market_client_config, ClientKey, ServerTlsError};
use crate::config::{parse_endpoint, Config, MarketConfig, MarketEndpoint};
use crate::inventory::error_chain;

/// How long an HTTP/2 keepalive ping may go unanswered.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the market link could not start.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// An endpoint is not `https://host:port`.
    #[error("market.endpoints: {0}")]
    Endpoint(String),
    /// The CA, certificate or key could not be loaded.
    #[error("market TLS files")]
    Tls(#[source] ServerTlsError),
    /// The served services' descriptors could not be read.
    #[error("cannot read the served methods' descriptors")]
    Methods(#[source] prost::DecodeError),
    /// `client_key = "tpm"` without a usable identity key.
    #[error("{0}")]
    TpmKey(String),
}

/// One endpoint's live state.
#[derive(Debug)]
struct EndpointState {
    status: Mutex<LinkStatus>,
    stats: Arc<TunnelStats>,
}

impl EndpointState {
    fn update(&self, change: impl FnOnce(&mut LinkStatus)) {
        change(&mut self.status.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn snapshot(&self) -> LinkStatus {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        status.streams_open = self.stats.streams_open();
        status.streams_total = self.stats.streams_total();
        status.streams_refused = self.stats.streams_refused();
        status.bytes_in = self.stats.bytes_in();
        status.bytes_out = self.stats.bytes_out();
        status
    }
}

/// The running market link.
#[derive(Debug)]
pub struct MarketLink {
    states: Vec<Arc<EndpointState>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// What every endpoint's loop shares.
struct Shared {
    config: MarketConfig,
    client_key: ClientKey,
    server: TunnelServer<Routes>,
    max_frame_bytes: usize,
}

impl MarketLink {
    /// Starts one tunnel loop per `[market] endpoints` entry, serving `routes` (built for
    /// [`crate::api::Door::Tunnel`]). The TLS files are loaded once here so a bad file fails
    /// the start; each connection reloads them (renewed certificates are used from the next
    /// tunnel on). An unreachable market does not fail the start: its loop keeps retrying.
    pub fn start(config: &Config, routes: Routes) -> Result<Self, MarketError> {
        let market = &config.market;
        let endpoints = market
            .endpoints
            .iter()
            .map(|url| parse_endpoint(url).map_err(MarketError::Endpoint))
            .collect::<Result<Vec<_>, _>>()?;
        let (stop, _) = watch::channel(false);
        if endpoints.is_empty() {
            return Ok(Self {
                states: Vec::new(),
                tasks: Vec::new(),
                stop,
            });
        }
        let client_key =
            super::tpm_key::client_key(&market.client_key, &config.tpm.tcti, &config.state.dir)
                .map_err(MarketError::TpmKey)?;
        load_tls(market, &client_key).map_err(MarketError::Tls)?;
        let methods = MethodTable::from_descriptor_sets(&[
            fog_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .map_err(MarketError::Methods)?;
        let max_message = u32::try_from(config.api.max_message_bytes.0).unwrap_or(u32::MAX);
        let tunnel = TunnelConfig {
            max_streams: market.max_streams as usize,
            max_message_bytes: max_message,
            stream_idle_timeout: market.stream_idle_timeout(),
            unary_timeout: Some(config.api.request_timeout()),
        };
        let shared = Arc::new(Shared {
            config: market.clone(),
            client_key,
            server: TunnelServer::new(routes, tunnel, methods),
            // A frame carries at most one 16 KiB chunk from a conforming market; a larger one
            // (up to a whole message) must still decode so that its stream, not the tunnel,
            // fails.
            max_frame_bytes: max_message as usize + 65_536,
        });
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        for endpoint in endpoints {
            let state = Arc::new(EndpointState {
                status: Mutex::new(LinkStatus {
                    endpoint: endpoint.url.clone(),
                    ..LinkStatus::default()
                }),
                stats: Arc::new(TunnelStats::default()),
            });
            states.push(state.clone());
            tasks.push(tokio::spawn(run_endpoint(
                endpoint,
                shared.clone(),
                state,
                stop.subscribe(),
            )));
        }
        Ok(Self {
            states,
            tasks,
            stop,
        })
    }

    /// Each endpoint's status, in config order.
    pub fn statuses(&self) -> Vec<LinkStatus> {
        snapshots(&self.states)
    }

    /// A cloneable reader of [`Self::statuses`].
    pub fn status_source(&self) -> impl Fn() -> Vec<LinkStatus> + Send + Sync + 'static {
        let states = self.states.clone();
        move || snapshots(&states)
    }

    /// Stops every tunnel: new streams are refused, open ones get up to `grace` to finish,
    /// then the tunnels are reset.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks;
        let all = async {
            for task in &mut tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            for task in &tasks {
                task.abort();
            }
        }
    }
}

fn snapshots(states: &[Arc<EndpointState>]) -> Vec<LinkStatus> {
    states.iter().map(|s| s.snapshot()).collect()
}

fn load_tls(
    market: &MarketConfig,
    key: &ClientKey,
) -> Result<Arc<rustls::ClientConfig>, ServerTlsError> {
    market_client_config(&market.ca, &market.client_cert, key).map(Arc::new)
}

/// How one tunnel attempt went.
enum Attempt {
    /// No tunnel was opened.
    Failed(String),
    /// A tunnel was up this long, then ended.
    Ended(Duration, String),
    /// The tunnel reached its age and drains in the background: open the next one now.
    Rotated,
    /// The link is stopping.
    Stopped,
}

async fn run_endpoint(
    endpoint: MarketEndpoint,
    shared: Arc<Shared>,
    state: Arc<EndpointState>,
    mut stop: watch::Receiver<bool>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(
        config.reconnect_min(),
        config.reconnect_max(),
        config.reconnect_spread(),
    );
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match one_tunnel(&endpoint, &shared, &state, stop.clone()).await {
            Attempt::Stopped => return,
            Attempt::Rotated => continue,
            Attempt::Failed(error) => {
                tracing::warn!(endpoint = %endpoint.url, %error, "market link: cannot open the tunnel");
                state.update(|s| {
                    s.up = false;
                    s.failures += 1;
                    s.last_error = error;
                });
                backoff.after_failure()
            }
            Attempt::Ended(up_for, reason) => {
                tracing::warn!(endpoint = %endpoint.url, up_secs = up_for.as_secs(), %reason, "market link: tunnel closed");
                state.update(|s| s.last_error = reason);
                if up_for >= config.healthy_after() {
                    backoff.after_healthy()
                } else {
                    backoff.after_failure()
                }
            }
        };
        tracing::debug!(endpoint = %endpoint.url, wait_ms = wait.as_millis() as u64, "market link: reconnecting after a wait");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Resolves once the link is told to stop (or its owner is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn one_tunnel(
    endpoint: &MarketEndpoint,
    shared: &Arc<Shared>,
    state: &Arc<EndpointState>,
    mut stop: watch::Receiver<bool>,
) -> Attempt {
    let config = &shared.config;
    let tls = match load_tls(config, &shared.client_key) {
        Ok(tls) => tls,
        Err(err) => return Attempt::Failed(error_chain(&err)),
    };
    // Connecting, the handshake and opening the call share one time limit (below).
    let connector = Connector::new(endpoint.clone(), tls, config.dead_after());
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    // The connector does the TLS: tonic sees plain http, the request URIs say https.
    let origin: Result<http::Uri, _> = format!("https://{host}:{}", endpoint.port).parse();
    let channel = match (
        Endpoint::from_shared(format!("http://{host}:{}", endpoint.port)),
        origin,
    ) {
        (Ok(channel), Ok(origin)) => channel
            .origin(origin)
            .http2_keep_alive_interval(config.keepalive_interval())
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true),
        _ => return Attempt::Failed(format!("{} is not a usable URL", endpoint.url)),
    };
    let opened = tokio::time::timeout(config.connect_timeout(), async {
        let channel = channel
            .connect_with_connector(connector.clone())
            .await
            .map_err(|e| error_chain(&e))?;
        let mut client = TunnelServiceClient::new(channel)
            .max_decoding_message_size(shared.max_frame_bytes)
            .max_encoding_message_size(1 << 20);
        let (out, frames) = fog_tunnel::outbound();
        let mut request = tonic::Request::new(frames);
        request.metadata_mut().insert(
            NEGOTIATE_HEADER,
            tonic::metadata::MetadataValue::from_static(NEGOTIATE_ON),
        );
        let response = client
            .open_reverse_tunnel(request)
            .await
            .map_err(|status| format!("OpenReverseTunnel: {status}"))?;
        Ok::<_, String>((response, out))
    })
    .await;
    // A connection made for a tunnel that did not open is closed at once: hyper would keep it
    // (and a half-sent call) open behind the never-ending request stream.
    let failed = |error: String| {
        connector.kill_switch().kill();
        Attempt::Failed(error)
    };
    let (response, out) = match opened {
        Err(_) => {
            return failed(format!(
                "opening the tunnel took longer than {} ms",
                config.connect_timeout().as_millis()
            ))
        }
        Ok(Err(error)) => return failed(error),
        Ok(Ok(opened)) => opened,
    };
    let Some(caller) = connector.caller() else {
        return failed("no market identity after the handshake".into());
    };
    let negotiated = response
        .metadata()
        .get(NEGOTIATE_HEADER)
        .is_some_and(|v| v == NEGOTIATE_ON);
    let inbound = response.into_inner();
    let role = caller.role;
    let mut extensions = http::Extensions::new();
    extensions.insert(caller);
    let up_at = Instant::now();
    state.update(|s| {
        s.up = true;
        s.connects += 1;
        s.role = role.name().to_owned();
        s.up_since = Some(SystemTime::now());
    });
    tracing::info!(endpoint = %endpoint.url, role = %role, revision_one = negotiated, "market link: tunnel up");

    let (drain_tx, drain_rx) = watch::channel(false);
    let session = {
        let shared = shared.clone();
        let stats = state.stats.clone();
        tokio::spawn(async move {
            shared
                .server
                .serve(inbound, out, negotiated, extensions, drain_rx, stats)
                .await
        })
    };
    let mut session = AbortOnDrop(session, connector.kill_switch());
    let rotate = async {
        match config.rotate_after() {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        end = &mut session.0 => Some(end),
        () = rotate => None,
        () = stopped(&mut stop) => {
            let _ = drain_tx.send(true);
            // Bounded by the caller's grace, which aborts this task.
            let _ = tokio::time::timeout(config.drain(), &mut session.0).await;
            state.update(|s| s.up = false);
            return Attempt::Stopped;
        }
    };
    match ended {
        Some(end) => {
            state.update(|s| s.up = false);
            let reason = match end {
                Ok(end) => describe(&end),
                Err(err) => format!("the tunnel task failed: {err}"),
            };
            Attempt::Ended(up_at.elapsed(), reason)
        }
        None => {
            // Still up: the next tunnel opens at once and takes the new streams.
            tracing::info!(endpoint = %endpoint.url, "market link: rotating the tunnel; the old one drains");
            let _ = drain_tx.send(true);
            let drain = config.drain();
            tokio::spawn(async move {
                let mut session = session;
                let _ = tokio::time::timeout(drain, &mut session.0).await;
                drop(drain_tx);
            });
            Attempt::Rotated
        }
    }
}

fn describe(end: &TunnelEnd) -> String {
    match end {
        TunnelEnd::Call(status) => format!(
            "the tunnel call failed: {} ({:?})",
            status.message(),
            status.code()
        ),
        other => other.to_string(),
    }
}

/// Aborts the tunnel session and kills its connection (the market sees the call reset) when
/// dropped.
struct AbortOnDrop(JoinHandle<TunnelEnd>, Arc<super::connect::KillSwitch>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
        self.1.kill();
    }
}
