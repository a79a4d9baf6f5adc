//! The market link's faults, against a minimal market written here with tonic (it accepts
//! reverse tunnels and holds them; the calls through a tunnel are tested against real markets
//! in `market.rs`): a market unreachable at start (the agent serves locally and keeps
//! retrying), a market that restarts (the agent is back within its backoff bound), market
//! certificates from the wrong CA or without a role (refused, with the reason in the link's
//! status), and a network that drops (found dead, reconnected; the agent runs in a network
//! namespace of its own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fog_agent::api::tls::{DevCerts, PemPair};
use fog_agent::config::Config;
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_proto::grpctunnel::v1::tunnel_service_server::{TunnelService, TunnelServiceServer};
use fog_proto::grpctunnel::v1::{ClientToServer, ServerToClient};
use fog_proto::v1 as pb;
use futures_util::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// A market that accepts reverse tunnels, answers the negotiate header, reads the agent's
/// frames and holds each tunnel open until it is killed.
#[derive(Clone)]
struct HoldingMarket {
    tunnels: Arc<AtomicU64>,
    kill: watch::Receiver<bool>,
}

type Frames = Pin<Box<dyn Stream<Item = Result<ClientToServer, Status>> + Send>>;
type ForwardFrames = Pin<Box<dyn Stream<Item = Result<ServerToClient, Status>> + Send>>;

#[tonic::async_trait]
impl TunnelService for HoldingMarket {
    type OpenTunnelStream = ForwardFrames;
    type OpenReverseTunnelStream = Frames;

    async fn open_tunnel(
        &self,
        _request: Request<Streaming<ClientToServer>>,
    ) -> Result<Response<ForwardFrames>, Status> {
        Err(Status::unimplemented("reverse tunnels only"))
    }

    async fn open_reverse_tunnel(
        &self,
        request: Request<Streaming<ServerToClient>>,
    ) -> Result<Response<Frames>, Status> {
        self.tunnels.fetch_add(1, Ordering::SeqCst);
        let mut frames = request.into_inner();
        tokio::spawn(async move { while let Some(Ok(_)) = frames.next().await {} });
        let mut kill = self.kill.clone();
        // No frames from the market; the call ends with UNAVAILABLE when the market is killed.
        let held = futures_util::stream::once(async move {
            let _ = kill.wait_for(|k| *k).await;
            Err(Status::unavailable("market restarting"))
        });
        let mut response = Response::new(Box::pin(held) as Frames);
        response
            .metadata_mut()
            .insert("grpctunnel-negotiate", "on".parse().unwrap());
        Ok(response)
    }
}

/// A running holding market; dropping `kill` (or sending true) ends its tunnels and stops
/// accepting.
struct Market {
    tunnels: Arc<AtomicU64>,
    kill: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl Market {
    async fn start(addr: SocketAddr, cert: &PemPair, client_ca: &str) -> Self {
        let tunnels = Arc::new(AtomicU64::new(0));
        let (kill, killed) = watch::channel(false);
        let service = HoldingMarket {
            tunnels: tunnels.clone(),
            kill: killed,
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem))
            .client_ca_root(Certificate::from_pem(client_ca));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let server = tokio::spawn(async move {
            let _ = Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(TunnelServiceServer::new(service))
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            tunnels,
            kill,
            server,
        }
    }

    /// Ends every tunnel and stops listening, as a crashed market would.
    fn kill(self) {
        let _ = self.kill.send(true);
        self.server.abort();
    }
}

/// A loopback port nothing listens on (bound, then released).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn market_config(config: &mut Config, certs: &Path, endpoints: Vec<String>) {
    config.market.endpoints = endpoints;
    config.market.ca = certs.join("ca.pem");
    config.market.client_cert = certs.join("agent.pem");
    config.market.client_key = certs.join("agent.key");
    config.market.reconnect_min_millis = 100;
    config.market.reconnect_max_millis = 800;
    config.market.reconnect_spread_millis = 500;
    config.market.healthy_after_millis = 300;
    config.market.connect_timeout_millis = 2_000;
}

async fn start_daemon(config: &Config) -> RunningDaemon {
    let mut options =
        DaemonOptions::for_host(config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent"))).unwrap();
    options.jobs = None;
    daemon::start(config, options).await.unwrap()
}

/// Waits up to `limit` for the link statuses to satisfy `done`; returns how long it took.
async fn wait_for(
    daemon: &RunningDaemon,
    limit: Duration,
    what: &str,
    done: impl Fn(&[fog_tunnel::LinkStatus]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let links = daemon.market_links();
        if done(&links) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}: {links:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_market_is_retried_while_the_agent_serves_and_a_restart_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCerts::generate().unwrap();
    let cert_dir = dir.path().join("certs");
    certs.write_to(&cert_dir).unwrap();
    let addr = free_port();
    let mut config = crate::support::mtls_config(dir.path());
    market_config(
        &mut config,
        &cert_dir,
        vec![format!("https://127.0.0.1:{}", addr.port())],
    );
    let daemon = start_daemon(&config).await;

    // Unreachable: the agent serves locally and keeps retrying.
    let mut client = crate::support::unix_client(&config.api.unix_socket).await;
    client
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap();
    wait_for(
        &daemon,
        Duration::from_secs(10),
        "two failed attempts",
        |l| l[0].failures >= 2,
    )
    .await;
    let links = client
        .get_market_links(pb::GetMarketLinksRequest {})
        .await
        .unwrap()
        .into_inner()
        .links;
    assert!(!links[0].up);
    assert!(
        links[0].last_error.contains("Connection refused"),
        "{:?}",
        links[0].last_error
    );

    // The market comes: the tunnel is up within one backoff bound (800 ms) and a connect.
    let market = Market::start(addr, &certs.market_server, &certs.ca.cert_pem).await;
    let took = wait_for(&daemon, Duration::from_secs(5), "tunnel up", |l| l[0].up).await;
    eprintln!("up {took:?} after the market started");
    assert_eq!(market.tunnels.load(Ordering::SeqCst), 1);
    let links = client
        .get_market_links(pb::GetMarketLinksRequest {})
        .await
        .unwrap()
        .into_inner()
        .links;
    assert!(links[0].up && links[0].role == "market" && links[0].up_since.is_some());

    // Up long enough to count as healthy, then the market restarts after 1 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    market.kill();
    wait_for(&daemon, Duration::from_secs(5), "tunnel down", |l| !l[0].up).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let market = Market::start(addr, &certs.market_server, &certs.ca.cert_pem).await;
    // Bound: the spread (500 ms) or a backoff bound (800 ms), plus the connect.
    let took = wait_for(&daemon, Duration::from_secs(5), "tunnel back", |l| l[0].up).await;
    eprintln!("back {took:?} after the market restarted");
    assert_eq!(market.tunnels.load(Ordering::SeqCst), 1);
    assert_eq!(daemon.market_links()[0].connects, 2);
    assert!(daemon.shutdown().await);
    market.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markets_from_another_ca_or_without_a_role_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCerts::generate().unwrap();
    let cert_dir = dir.path().join("certs");
    certs.write_to(&cert_dir).unwrap();
    let stranger = DevCerts::generate().unwrap();
    let (foreign, roleless) = (free_port(), free_port());
    // Another CA's market certificate; this CA's certificate with no role URI (the agent's own
    // server certificate). A certificate naming admin: `market::connect`'s unit tests.
    let markets = [
        Market::start(foreign, &stranger.market_server, &certs.ca.cert_pem).await,
        Market::start(roleless, &certs.server, &certs.ca.cert_pem).await,
    ];
    let mut config = crate::support::mtls_config(dir.path());
    market_config(
        &mut config,
        &cert_dir,
        [foreign, roleless]
            .iter()
            .map(|a| format!("https://localhost:{}", a.port()))
            .collect(),
    );
    let daemon = start_daemon(&config).await;
    wait_for(
        &daemon,
        Duration::from_secs(10),
        "failures on every endpoint",
        |l| l.iter().all(|l| l.failures >= 2),
    )
    .await;
    let links = daemon.market_links();
    for (link, says) in links
        .iter()
        .zip(["invalid peer certificate", "no fog://role/<role> URI SAN"])
    {
        assert!(!link.up && link.connects == 0, "{link:?}");
        assert!(
            link.last_error.contains(says),
            "{}: {:?}",
            link.endpoint,
            link.last_error
        );
    }
    for market in markets {
        assert_eq!(market.tunnels.load(Ordering::SeqCst), 0);
        market.kill();
    }
    assert!(daemon.shutdown().await);
}
