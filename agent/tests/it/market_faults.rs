//! The market link's faults, against a minimal market written here with tonic (it accepts
//! reverse tunnels and holds them; the calls through a tunnel are tested against real markets
//! in `market.rs`): a market unreachable at start (the agent serves locally and keeps
//! retrying), a market that restarts (the agent is back within its backoff bound), market
//! certificates from the wrong CA or without a role (refused, with the reason in the link's
//! status), a network that drops (found dead, reconnected; the agent runs in a network
//! namespace of its own), and `client_key = "tpm"` without its key or certificate (the start
//! fails, saying what to do).
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
    /// Where it listens.
    addr: SocketAddr,
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
        let addr = listener.local_addr().unwrap();
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
            addr,
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

/// A temporary dir with a development certificate set written to `<dir>/certs`.
fn fixture() -> (tempfile::TempDir, DevCerts, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let certs = DevCerts::generate().unwrap();
    let cert_dir = dir.path().join("certs");
    certs.write_to(&cert_dir).unwrap();
    (dir, certs, cert_dir)
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
    let (dir, certs, cert_dir) = fixture();
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
    let (dir, certs, cert_dir) = fixture();
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

/// A network namespace for the agent whose only link is a veth to the test's "internet"
/// (203.0.113.0/24, a documentation range): the market is 203.0.113.1 on the root side, the
/// agent 203.0.113.2; inside, `localhost` resolves to the market (`/etc/netns/<ns>/hosts`, which
/// `ip netns exec` mounts over `/etc/hosts`), so the development market certificate matches.
/// Removed (namespace, veth, files) on drop.
struct AgentNetns {
    name: String,
    veth: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl AgentNetns {
    fn create() -> Result<Self, String> {
        let id = std::process::id();
        let ns = Self {
            name: format!("fogt{id}"),
            veth: format!("fgm{id}"),
        };
        let inside = format!("fga{id}");
        ip(&["netns", "add", &ns.name])?;
        let hosts = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&hosts).map_err(|e| e.to_string())?;
        std::fs::write(hosts.join("hosts"), "203.0.113.1 localhost\n")
            .map_err(|e| e.to_string())?;
        ip(&[
            "link", "add", &ns.veth, "type", "veth", "peer", "name", &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &ns.name])?;
        ip(&["addr", "add", "203.0.113.1/24", "dev", &ns.veth])?;
        ip(&["link", "set", &ns.veth, "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            "203.0.113.2/24",
            "dev",
            &inside,
        ])?;
        ip(&["-n", &ns.name, "link", "set", &inside, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.veth, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for AgentNetns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_network_is_found_dead_and_the_tunnel_comes_back() {
    const TEST: &str = "a_dropped_network_is_found_dead_and_the_tunnel_comes_back";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return crate::support::skip(TEST, "network namespaces need root");
    }
    let netns = match AgentNetns::create() {
        Ok(netns) => netns,
        Err(err) => return crate::support::skip(TEST, &format!("cannot make a namespace: {err}")),
    };
    let (dir, certs, cert_dir) = fixture();
    let market = Market::start(
        "203.0.113.1:0".parse().unwrap(),
        &certs.market_server,
        &certs.ca.cert_pem,
    )
    .await;
    let port = market.addr.port();
    let socket = dir.path().join("agent.sock");
    let config = format!(
        r#"
[api]
listen = []
unix_socket = "{socket}"
[state]
dir = "{state}"
[tpm]
tcti = "{tcti}"
[bench]
run_on_start = false
[metrics]
enabled = false
[market]
endpoints = ["https://localhost:{port}"]
ca = "{certs}/ca.pem"
client_cert = "{certs}/agent.pem"
client_key = "{certs}/agent.key"
reconnect_min_millis = 200
reconnect_max_millis = 1000
reconnect_spread_millis = 500
healthy_after_millis = 500
connect_timeout_millis = 1000
dead_after_millis = 4000
"#,
        socket = socket.display(),
        state = dir.path().join("state").display(),
        tcti = crate::support::NO_TPM_TCTI,
        certs = cert_dir.display(),
    );
    let config_file = dir.path().join("agent.toml");
    std::fs::write(&config_file, config).unwrap();
    let mut agent = std::process::Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(env!("CARGO_BIN_EXE_fog-agent"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let links = |socket: PathBuf| async move {
        let mut client = crate::support::unix_client(&socket).await;
        client
            .get_market_links(pb::GetMarketLinksRequest {})
            .await
            .unwrap()
            .into_inner()
            .links
    };
    let wait = |what: &'static str, limit: Duration, up: bool| {
        let socket = socket.clone();
        async move {
            let start = Instant::now();
            loop {
                if socket.exists() && links(socket.clone()).await[0].up == up {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < limit,
                    "{what} not within {limit:?}:\n{}",
                    log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait("tunnel up", Duration::from_secs(20), true).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // The network goes: nothing is sent or acknowledged; the kernel's keepalive probes and
    // user timeout find the connection dead within about dead_after_millis.
    netns.link(false);
    let took = wait("tunnel found dead", Duration::from_secs(20), false).await;
    eprintln!("found dead {took:?} after the link went down (dead_after_millis = 4000)");
    let down = links(socket.clone()).await;
    assert!(!down[0].last_error.is_empty(), "{down:?}");

    netns.link(true);
    let took = wait("tunnel back", Duration::from_secs(20), true).await;
    eprintln!("back {took:?} after the link came back");
    assert_eq!(market.tunnels.load(Ordering::SeqCst), 2);
    crate::support::terminate(&mut agent);
    market.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_are_rotated_at_their_age() {
    let (dir, certs, cert_dir) = fixture();
    let market = Market::start(
        "127.0.0.1:0".parse().unwrap(),
        &certs.market_server,
        &certs.ca.cert_pem,
    )
    .await;
    let mut config = crate::support::mtls_config(dir.path());
    market_config(
        &mut config,
        &cert_dir,
        vec![format!("https://127.0.0.1:{}", market.addr.port())],
    );
    config.market.rotate_after_millis = 400;
    config.market.drain_millis = 1_000;
    let daemon = start_daemon(&config).await;
    // A new tunnel at each age, opened at once (no backoff), with no failure between.
    wait_for(&daemon, Duration::from_secs(10), "three tunnels", |l| {
        l[0].connects >= 3
    })
    .await;
    let link = &daemon.market_links()[0];
    assert_eq!(link.failures, 0, "{link:?}");
    assert!(market.tunnels.load(Ordering::SeqCst) >= 3);
    assert!(daemon.shutdown().await);
    market.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_client_key_needs_the_identity_key_and_a_certificate_for_it() {
    let (dir, _, cert_dir) = fixture();
    let mut config = crate::support::mtls_config(dir.path());
    market_config(
        &mut config,
        &cert_dir,
        vec![format!("https://{}", free_port())],
    );
    config.market.client_key = "tpm".into();
    let start = |config: Config| async move {
        let options =
            DaemonOptions::for_host(&config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent")))
                .unwrap();
        match daemon::start(&config, options).await {
            Ok(_) => panic!("started without a usable TPM client key"),
            Err(err) => fog_agent::inventory::error_chain(&err),
        }
    };
    // No identity key in the state directory yet.
    let err = start(config.clone()).await;
    assert!(
        err.contains("no identity key") && err.contains("attest identity-request"),
        "{err}"
    );
    // A key, but the certificate is the development one, for a file key.
    let swtpm = fog_tpm::testing::Swtpm::start().unwrap();
    let tpm = fog_tpm::device::Tpm::open(&swtpm.tcti()).unwrap();
    tpm.create_identity_key()
        .unwrap()
        .save(&config.state.dir)
        .unwrap();
    config.tpm.tcti = swtpm.tcti().to_string();
    let err = start(config).await;
    assert!(
        err.contains("is not a certificate for the TPM identity key"),
        "{err}"
    );
}
