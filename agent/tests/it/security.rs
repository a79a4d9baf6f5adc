//! The API's defences over real loopback sockets and real TLS (issue 19): connection and
//! handshake limits under a flood of connections that never start TLS, the audit trail in the
//! daemon's own log output, certificate revocation through `[api] crl_file`, and server
//! certificate rotation (on a file change and on SIGHUP) without dropping an open stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fog_agent::api::auth::Role;
use fog_agent::api::tls::{DevCerts, PemPair};
use fog_agent::capacity::Allocations;
use fog_agent::config::Config;
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::support::NO_TPM_TCTI;

struct Daemon {
    dir: tempfile::TempDir,
    certs: DevCerts,
    daemon: Option<RunningDaemon>,
}

impl Daemon {
    async fn start(tweak: impl FnOnce(&mut Config, &Path, &DevCerts)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = DevCerts::generate().unwrap();
        certs.write_to(&dir.path().join("certs")).unwrap();
        let mut config = crate::support::mtls_config(dir.path());
        tweak(&mut config, dir.path(), &certs);
        let mut options =
            DaemonOptions::for_host(&config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent")))
                .unwrap();
        options.jobs = None;
        let daemon = daemon::start(&config, options).await.unwrap();
        Self {
            dir,
            certs,
            daemon: Some(daemon),
        }
    }

    fn running(&self) -> &RunningDaemon {
        self.daemon.as_ref().unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.running().tcp_addrs()[0]
    }

    /// A fresh mTLS connection from `source` (a loopback address) trusting `ca`.
    async fn connect(
        &self,
        ca: &str,
        client: &PemPair,
        source: Option<IpAddr>,
    ) -> Result<AgentClient<Channel>, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(&client.cert_pem, &client.key_pem));
        let channel = Endpoint::from_shared(format!("https://{}", self.addr()))
            .unwrap()
            .local_address(source)
            .connect_timeout(Duration::from_secs(5))
            .tls_config(tls)
            .unwrap()
            .connect()
            .await?;
        Ok(AgentClient::new(channel))
    }

    async fn client(&self, role: Role) -> AgentClient<Channel> {
        self.connect(&self.certs.ca.cert_pem, self.certs.client(role), None)
            .await
            .unwrap()
    }

    async fn metrics(&self) -> String {
        scrape(self.running().metrics_addr().unwrap()).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Listener tasks end with the test's runtime.
        let _ = self.daemon.take();
    }
}

/// `GET /metrics` over plain HTTP/1.0.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the series `line_start` (`name{labels}`) in a scrape, 0 if absent.
fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// 240 connections that never start TLS, from 4 loopback addresses, against limits lowered to
/// 16 handshakes per peer and 32 per listener: each peer's excess is closed on accept, the
/// listener holds exactly its 32 unfinished handshakes (at its limit) and closes the oldest for
/// newer ones. Meanwhile the admin socket answers within 100 ms (median of 5 fresh
/// connections) and a fresh mTLS connection from a fifth address reaches GetCapacity and
/// GetAttestation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_flood_leaves_the_admin_socket_and_mtls_clients_served() {
    let harness = Daemon::start(|c, _, _| {
        c.api.max_connections = 64;
        c.api.max_connections_per_peer = 48;
        c.api.max_pending_handshakes = 32;
        c.api.max_pending_handshakes_per_peer = 16;
        // Long enough that no flood connection times out during the test.
        c.api.handshake_timeout_millis = 60_000;
    })
    .await;
    let addr = harness.addr();
    let listener = format!("listener=\"{addr}\"");

    // 4 loopback peers x 60 connections that never send a byte: 240 connections, bounded.
    let mut flood = Vec::new();
    for peer in 1..=4u8 {
        for _ in 0..60 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::from(([127, 0, 0, peer], 0)))
                .unwrap();
            flood.push(socket.connect(addr).await.unwrap());
        }
    }
    // The agent has accepted them all: each is admitted or closed at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = harness.metrics().await;
        let closed = metric(
            &text,
            &format!("fog_api_connections_closed_total{{{listener},reason=\"peer_limit\"}}"),
        ) + metric(
            &text,
            &format!("fog_api_connections_closed_total{{{listener},reason=\"evicted\"}}"),
        );
        let pending = metric(&text, &format!("fog_api_handshakes_pending{{{listener}}}"));
        if closed + pending >= 240.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Each peer got at most 16 handshakes; the listener holds its 32 and closed the rest.
    assert_eq!(
        metric(&text, &format!("fog_api_handshakes_pending{{{listener}}}")),
        32.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("fog_api_connections_closed_total{{{listener},reason=\"peer_limit\"}}")
        ),
        4.0 * (60.0 - 16.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("fog_api_connections_closed_total{{{listener},reason=\"evicted\"}}")
        ),
        4.0 * 16.0 - 32.0,
        "{text}"
    );

    // The admin socket answers promptly: the median of 5 fresh connections and calls.
    let socket = harness.running().unix_socket().unwrap().to_owned();
    let mut took = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut admin = crate::support::unix_client(&socket).await;
        admin.get_capacity(pb::GetCapacityRequest {}).await.unwrap();
        took.push(start.elapsed());
    }
    took.sort();
    assert!(
        took[2] < Duration::from_millis(100),
        "admin socket median {:?} (all {took:?})",
        took[2]
    );

    // A fresh mTLS connection from another address gets in (it closes the oldest unfinished
    // handshake) and its RPCs reach the handlers.
    let market = harness.certs.client(Role::Market).clone();
    let mut client = harness
        .connect(
            &harness.certs.ca.cert_pem,
            &market,
            Some(IpAddr::from([127, 0, 0, 10])),
        )
        .await
        .unwrap();
    client
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap();
    let attestation = client
        .get_attestation(pb::GetAttestationRequest {
            nonce: vec![7; 32],
            ..Default::default()
        })
        .await
        .unwrap_err();
    // The handler answered (no TPM at this TCTI), not the transport.
    assert_eq!(attestation.code(), Code::Unavailable, "{attestation:?}");
    assert!(
        attestation.message().contains(NO_TPM_TCTI),
        "{attestation:?}"
    );
    // The flood's first connections were closed by the agent (end of stream or reset).
    use tokio::io::AsyncReadExt;
    let mut first = flood.remove(0);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(flood);
}

/// A CRL signed by the development CA, revoking `revoked` (serials of client certificates).
fn crl_pem(certs: &DevCerts, revoked: &[&PemPair]) -> String {
    use rcgen::{
        CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
    };
    // The development CA's name and key (see `DevCerts::generate`).
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "fog-agent development");
    dn.push(DnType::CommonName, "fog-agent development CA");
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::new(params, KeyPair::from_pem(&certs.ca.key_pem).unwrap());
    let now = time::OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|pair| {
            let der = fog_agent::api::tls::pem_to_der(&pair.cert_pem).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            RevokedCertParams {
                serial_number: SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }
        })
        .collect();
    CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(u64::try_from(revoked.len()).unwrap() + 1),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// Replaces `path` atomically (write aside, rename), as configuration tools do.
fn replace(path: &Path, text: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_once_the_crl_is_reloaded() {
    let harness = Daemon::start(|c, dir, certs| {
        let crl = dir.join("certs/crl.pem");
        std::fs::write(&crl, crl_pem(certs, &[])).unwrap();
        c.api.crl_file = crl;
        c.api.tls_reload_interval_millis = 100;
    })
    .await;
    let ca = harness.certs.ca.cert_pem.clone();
    let market = harness.certs.client(Role::Market).clone();
    let auditor = harness.certs.client(Role::Auditor).clone();
    // Not revoked yet: served.
    let mut before = harness.connect(&ca, &market, None).await.unwrap();
    before
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap();

    replace(
        &harness.dir.path().join("certs/crl.pem"),
        &crl_pem(&harness.certs, &[&market]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A fresh connection each time: the handshake checks the CRL.
        let refused = match harness.connect(&ca, &market, None).await {
            Err(_) => true,
            Ok(mut client) => client
                .get_capacity(pb::GetCapacityRequest {})
                .await
                .is_err(),
        };
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revoked certificate was still served 10 s after the CRL changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only that certificate: the auditor's still works.
    let mut other = harness.connect(&ca, &auditor, None).await.unwrap();
    other
        .get_inventory(pb::GetInventoryRequest::default())
        .await
        .unwrap();
    let text = harness.metrics().await;
    assert!(
        metric(
            &text,
            &format!(
                "fog_api_connections_closed_total{{listener=\"{}\",reason=\"handshake_failed\"}}",
                harness.addr()
            )
        ) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_is_served_while_an_open_stream_continues() {
    let harness = Daemon::start(|c, _, _| {
        c.api.tls_reload_interval_millis = 100;
        c.capacity.reserve_cpu_millicores = 0;
    })
    .await;
    let mut market = harness.client(Role::Market).await;
    let mut stream = market
        .watch_capacity(pb::WatchCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().capacity.unwrap();

    // A server certificate from another CA: a client trusting only that CA can connect once
    // the agent serves it.
    let other = DevCerts::generate().unwrap();
    let client_cert = harness.certs.client(Role::Market).clone();
    assert!(harness
        .connect(&other.ca.cert_pem, &client_cert, None)
        .await
        .is_err());
    let certs_dir = harness.dir.path().join("certs");
    replace(&certs_dir.join("server.pem"), &other.server.cert_pem);
    replace(&certs_dir.join("server.key"), &other.server.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rotated = loop {
        match harness
            .connect(&other.ca.cert_pem, &client_cert, None)
            .await
        {
            Ok(client) => break client,
            Err(err) => assert!(
                Instant::now() < deadline,
                "the new certificate was not served within 10 s: {err:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    rotated
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap();
    // The stream opened before the rotation still delivers.
    harness
        .running()
        .shared()
        .capacity
        .set_allocations(Allocations {
            cpu_millicores: 100,
            ..Allocations::default()
        });
    // (Skipping updates from the background inventory collection.)
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let capacity = stream.message().await.unwrap().unwrap().capacity.unwrap();
            if capacity.cpu_millicores.unwrap().allocated == 100 {
                break capacity;
            }
        }
    })
    .await
    .expect("the stream opened before the rotation delivered no update");
    assert!(next.sequence > first.sequence);
    // And a client trusting only the old CA is now refused.
    assert!(harness
        .connect(&harness.certs.ca.cert_pem, &client_cert, None)
        .await
        .is_err());
    let text = harness.metrics().await;
    assert!(
        metric(&text, "fog_api_tls_reloads_total{result=\"ok\"}") >= 1.0,
        "{text}"
    );
}

/// The serial of a PEM certificate as audit events write it.
fn serial(pair: &PemPair) -> String {
    let der = fog_agent::api::tls::pem_to_der(&pair.cert_pem).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string()
}

/// `fog-agent serve`, its log on stderr in a file; killed on drop.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_name_caller_and_outcome_in_the_daemon_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = DevCerts::generate().unwrap();
    certs.write_to(&d.join("certs")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = d.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\nunix_socket = \"{d}/run/agent.sock\"\n\
             tls_cert = \"{d}/certs/server.pem\"\ntls_key = \"{d}/certs/server.key\"\n\
             client_ca = \"{d}/certs/ca.pem\"\n[state]\ndir = \"{d}/state\"\n\
             [bench]\nrun_on_start = false\n[tpm]\ntcti = \"{NO_TPM_TCTI}\"\n\
             [metrics]\nenabled = false\n",
            d = d.display()
        ),
    )
    .unwrap();
    let log = d.join("agent.log");
    let mut served = Served {
        child: Command::new(env!("CARGO_BIN_EXE_fog-agent"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("FOG_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    let socket = d.join("run/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !socket.exists() {
        let exited = served.child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "fog-agent serve did not listen (exit: {exited:?}); its log:\n{}",
            std::fs::read_to_string(&served.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect = |identity: Option<&PemPair>| {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&certs.ca.cert_pem));
        if let Some(pair) = identity {
            tls = tls.identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem));
        }
        let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        async move { endpoint.connect().await.map(AgentClient::new) }
    };
    let market_pair = certs.client(Role::Market);
    let mut market = connect(Some(market_pair)).await.unwrap();
    let denied = market
        .remove_image(pb::RemoveImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let stop = market
        .stop_job(pb::StopJobRequest {
            job_id: "no-such-job".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    market
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap();
    let mut auditor = connect(Some(certs.client(Role::Auditor))).await.unwrap();
    assert_eq!(
        auditor
            .get_capacity(pb::GetCapacityRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut admin = crate::support::unix_client(&socket).await;
    admin
        .stop_job(pb::StopJobRequest {
            job_id: "no-such-job".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // No client certificate: the handshake fails (TLS 1.3 may report it at the first call).
    if let Ok(mut anonymous) = connect(None).await {
        anonymous
            .get_capacity(pb::GetCapacityRequest {})
            .await
            .unwrap_err();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    crate::support::terminate(&mut served.child);

    let text = std::fs::read_to_string(&served.log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["target"] == "fog_agent::audit")
        .map(|event| event["fields"].clone())
        .collect();
    let find = |rpc: &str, role: &str| {
        events
            .iter()
            .filter(|e| e["rpc"] == rpc && e["role"] == role)
            .collect::<Vec<_>>()
    };
    let remove = find("RemoveImage", "market");
    assert_eq!(remove.len(), 1, "{text}");
    let remove = remove[0];
    assert_eq!(remove["code"], "PermissionDenied", "{remove}");
    assert_eq!(remove["door"], "mtls");
    assert!(
        remove["subject"]
            .as_str()
            .unwrap()
            .contains("CN=fog market"),
        "{remove}"
    );
    assert_eq!(remove["serial"], serial(market_pair).as_str(), "{remove}");
    assert!(
        remove["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{remove}"
    );
    let stopped = find("StopJob", "market");
    assert_eq!(stopped.len(), 1, "{text}");
    assert_eq!(stopped[0]["code"], format!("{:?}", stop.code()).as_str());
    assert_eq!(find("GetCapacity", "auditor").len(), 1, "{text}");
    assert_eq!(
        find("GetCapacity", "auditor")[0]["code"],
        "PermissionDenied"
    );
    // Allowed reads are no audit events.
    assert!(find("GetCapacity", "market").is_empty(), "{text}");
    let local = find("StopJob", "admin");
    assert_eq!(local.len(), 1, "{text}");
    assert_eq!(local[0]["door"], "local");
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(local[0]["uid"], u64::from(uid), "{}", local[0]);
    let handshakes: Vec<_> = events
        .iter()
        .filter(|e| e["message"] == "handshake failed")
        .collect();
    assert!(!handshakes.is_empty(), "{text}");
    assert!(handshakes[0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_files() {
    // No polling: only the signal reloads.
    let harness = Daemon::start(|c, _, _| c.api.tls_reload_interval_millis = 0).await;
    let other = DevCerts::generate().unwrap();
    let client_cert = harness.certs.client(Role::Market).clone();
    let certs_dir = harness.dir.path().join("certs");
    replace(&certs_dir.join("server.pem"), &other.server.cert_pem);
    replace(&certs_dir.join("server.key"), &other.server.key_pem);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        harness
            .connect(&other.ca.cert_pem, &client_cert, None)
            .await
            .is_err(),
        "reloaded without a signal"
    );
    // SAFETY: raise(2) has no memory-safety preconditions; every daemon of this process has
    // a SIGHUP handler (registered in `daemon::start`), so the signal only reloads.
    assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match harness
            .connect(&other.ca.cert_pem, &client_cert, None)
            .await
        {
            Ok(_) => break,
            Err(err) => assert!(
                Instant::now() < deadline,
                "not reloaded within 10 s of SIGHUP: {err:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
