//! The daemon over real loopback sockets with real mutual TLS (certificates from our own
//! dev-certs code): the role matrix, mTLS rejections, request validation, telemetry fan-out,
//! the capacity watch, the unix admin socket, shutdown, config files through `check-config`,
//! and a real Python gRPC client plus grpcurl against the `fog-agent serve` binary.

// Helpers outside #[test] functions unwrap too: a panic there is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fog_agent::api::auth::{Role, Rpc};
use fog_agent::api::tls::DevCerts;
use fog_agent::capacity::Allocations;
use fog_agent::config::Config;
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_agent::fsroot::FsRoot;
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::support::NO_TPM_TCTI;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
}

/// A daemon on 127.0.0.1:<free port> with fresh dev certificates and its own state dir.
struct Harness {
    dir: tempfile::TempDir,
    certs: DevCerts,
    daemon: Option<RunningDaemon>,
    addr: SocketAddr,
}

impl Harness {
    /// A daemon with the parts `fog-agent serve` runs: the benchmark suite (no background run),
    /// the TPM at an unreachable TCTI, NVML (none here), jobs over runc.
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = DevCerts::generate().unwrap();
        certs.write_to(&dir.path().join("certs")).unwrap();
        let mut config = crate::support::mtls_config(dir.path());
        tweak(&mut config);
        // Jobs enabled (no image known): the role matrix reaches the job RPCs' own checks.
        let options =
            DaemonOptions::for_host(&config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent")))
                .unwrap();
        let daemon = daemon::start(&config, options).await.unwrap();
        let addr = daemon.tcp_addrs()[0];
        Self {
            dir,
            certs,
            daemon: Some(daemon),
            addr,
        }
    }

    fn running(&self) -> &RunningDaemon {
        self.daemon.as_ref().unwrap()
    }

    async fn channel(&self, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        self.channel_with_window(tls, None).await
    }

    /// A channel whose HTTP/2 receive windows are `window` bytes (hyper's default is 2 MiB).
    async fn channel_with_window(
        &self,
        tls: ClientTlsConfig,
        window: Option<u32>,
    ) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    fn tls(&self, identity: Option<(&str, &str)>) -> ClientTlsConfig {
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.certs.ca.cert_pem));
        match identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }

    async fn client(&self, role: Role) -> AgentClient<Channel> {
        let pair = self.certs.client(role);
        let channel = self
            .channel(self.tls(Some((&pair.cert_pem, &pair.key_pem))))
            .await
            .unwrap();
        AgentClient::new(channel)
    }
}

/// Calls `rpc` with a valid request and returns the resulting code (streams: the code of the
/// call itself, not of later messages).
async fn call(client: &mut AgentClient<Channel>, rpc: Rpc) -> Code {
    fn code<T>(result: Result<T, tonic::Status>) -> Code {
        result.map_or_else(|status| status.code(), |_| Code::Ok)
    }
    match rpc {
        Rpc::GetInventory => code(
            client
                .get_inventory(pb::GetInventoryRequest::default())
                .await,
        ),
        Rpc::GetBenchmarks => code(client.get_benchmarks(pb::GetBenchmarksRequest {}).await),
        Rpc::RunBenchmarks => {
            match client
                .run_benchmarks(pb::RunBenchmarksRequest {
                    benchmark_ids: vec!["no.such.benchmark".into()],
                })
                .await
            {
                Ok(response) => code(response.into_inner().message().await),
                Err(status) => status.code(),
            }
        }
        Rpc::GetCapacity => code(client.get_capacity(pb::GetCapacityRequest {}).await),
        Rpc::WatchCapacity => code(client.watch_capacity(pb::WatchCapacityRequest {}).await),
        Rpc::WatchHostTelemetry => code(
            client
                .watch_host_telemetry(pb::WatchHostTelemetryRequest { interval_millis: 0 })
                .await,
        ),
        Rpc::GetAttestation => code(
            client
                .get_attestation(pb::GetAttestationRequest {
                    nonce: vec![7; 32],
                    pcr_selection: None,
                })
                .await,
        ),
        Rpc::GetEnrollment => code(client.get_enrollment(pb::GetEnrollmentRequest {}).await),
        Rpc::StartJob => code(
            client
                .start_job(pb::StartJobRequest {
                    spec: Some(pb::JobSpec {
                        job_id: "role-matrix".into(),
                        image: "not-imported:1".into(),
                        ..pb::JobSpec::default()
                    }),
                })
                .await,
        ),
        Rpc::StopJob => code(
            client
                .stop_job(pb::StopJobRequest {
                    job_id: "nope".into(),
                    grace_millis: 0,
                })
                .await,
        ),
        Rpc::GetJob => code(
            client
                .get_job(pb::GetJobRequest {
                    job_id: "nope".into(),
                })
                .await,
        ),
        Rpc::ListJobs => code(client.list_jobs(pb::ListJobsRequest::default()).await),
        Rpc::WatchJob => code(
            client
                .watch_job(pb::WatchJobRequest {
                    job_id: "nope".into(),
                    logs: false,
                })
                .await,
        ),
        Rpc::JobLogs => code(
            client
                .job_logs(pb::JobLogsRequest {
                    job_id: "nope".into(),
                    tail_lines: 0,
                    follow: false,
                })
                .await,
        ),
        Rpc::ImportImage => code(
            client
                .import_image(pb::ImportImageRequest {
                    layout_dir: "relative/dir".into(),
                    reference: String::new(),
                })
                .await,
        ),
        Rpc::RemoveImage => code(
            client
                .remove_image(pb::RemoveImageRequest {
                    name: "not-imported:1".into(),
                })
                .await,
        ),
        Rpc::GetMarketLinks => code(client.get_market_links(pb::GetMarketLinksRequest {}).await),
        Rpc::PullImage => code(
            client
                .pull_image(pb::PullImageRequest {
                    reference: String::new(),
                    ..pb::PullImageRequest::default()
                })
                .await,
        ),
        Rpc::GetReceipts => code(
            client
                .get_receipts(pb::GetReceiptsRequest {
                    job_id: "nope".into(),
                })
                .await,
        ),
        Rpc::WatchReceipts => code(
            client
                .watch_receipts(pb::WatchReceiptsRequest {
                    job_id: "nope".into(),
                })
                .await,
        ),
        Rpc::ActivateCredential => code(
            client
                .activate_credential(pb::ActivateCredentialRequest {
                    credential_blob: vec![1; 64],
                    encrypted_secret: vec![2; 64],
                    enroll_nonce: vec![3; 32],
                })
                .await,
        ),
    }
}

/// What an allowed call answers on the harness's daemon: no TPM, no benchmark results yet.
fn expected_when_allowed(rpc: Rpc) -> Code {
    match rpc {
        Rpc::GetAttestation | Rpc::GetEnrollment | Rpc::ActivateCredential => Code::Unavailable,
        // The request names an unknown benchmark (a valid one would run the suite).
        Rpc::RunBenchmarks => Code::InvalidArgument,
        // Past authorization, each job RPC answers its own check: the image is not imported,
        // the job is unknown, the layout dir is not absolute, the reference is empty.
        Rpc::StartJob | Rpc::ImportImage | Rpc::PullImage => Code::InvalidArgument,
        Rpc::StopJob
        | Rpc::GetJob
        | Rpc::WatchJob
        | Rpc::JobLogs
        | Rpc::RemoveImage
        | Rpc::GetReceipts
        | Rpc::WatchReceipts => Code::NotFound,
        _ => Code::Ok,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_matrix_over_mtls() {
    let harness = Harness::start(|_| {}).await;
    for role in Role::ALL {
        let mut client = harness.client(role).await;
        for rpc in Rpc::ALL {
            let want = if fog_agent::api::auth::allowed(role, rpc) {
                expected_when_allowed(rpc)
            } else {
                Code::PermissionDenied
            };
            assert_eq!(call(&mut client, rpc).await, want, "{role} calling {rpc:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wired_backends_report_pending_benchmarks_and_an_unreachable_tpm() {
    let harness = Harness::start(|_| {}).await;
    let mut client = harness.client(Role::Admin).await;
    let report = client
        .get_benchmarks(pb::GetBenchmarksRequest {})
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert_eq!(report.state(), pb::BenchmarkState::Pending);
    assert!(report.results.is_empty());
    assert!(!report.fingerprint.is_empty());

    let err = client
        .get_attestation(pb::GetAttestationRequest {
            nonce: vec![7; 32],
            pcr_selection: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains(NO_TPM_TCTI), "{}", err.message());
    let err = client
        .get_enrollment(pb::GetEnrollmentRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(err.message().contains(NO_TPM_TCTI), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wired_benchmarks_serve_cached_results_as_done() {
    let harness = Harness::start(|_| {}).await;
    // Store one measured record under the daemon's fingerprint, as a finished run does.
    let inventory = fog_agent::inventory::collect_from(FsRoot::host());
    let fingerprint = fog_agent::bench::fingerprint(&inventory);
    let state_dir = harness.dir.path().join("state");
    let store = fog_agent::state::StateStore::open(&state_dir).unwrap();
    let spec = fog_agent::bench::suite::select(fog_agent::bench::Mode::Quick, None)
        .unwrap()
        .remove(0);
    let mut record = fog_agent::bench::BenchRecord::without_result(
        &spec,
        "cpu",
        fog_agent::bench::Status::Ok,
        String::new(),
    );
    record.reason = None;
    record.unit = Some("GFLOP/s".into());
    record.summary = fog_bench::Summary::of(&[10.0, 12.0, 11.0]);
    record.duration_s = 1.25;
    store
        .bench_put(
            &fog_agent::state::BenchKey {
                fingerprint: fingerprint.clone(),
                bench_id: spec.id.to_owned(),
                device: "cpu".into(),
                kernel_version: record.kernel_version,
                driver_versions: String::new(),
            },
            &serde_json::to_value(&record).unwrap(),
        )
        .unwrap();
    let mut client = harness.client(Role::Market).await;
    let report = client
        .get_benchmarks(pb::GetBenchmarksRequest {})
        .await
        .unwrap()
        .into_inner()
        .report
        .unwrap();
    assert_eq!(report.state(), pb::BenchmarkState::Done);
    assert_eq!(report.fingerprint, fingerprint);
    assert_eq!(report.results.len(), 1);
    let r = &report.results[0];
    assert_eq!(r.benchmark_id, spec.id);
    assert_eq!(r.unit, "GFLOP/s");
    assert!((r.value - 11.0).abs() < 1e-9);
    assert_eq!(r.samples, 3);
    assert_eq!(r.duration_millis, 1250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_gets_no_rpc() {
    let harness = Harness::start(|_| {}).await;
    let result = async {
        let channel = harness.channel(harness.tls(None)).await?;
        let mut client = AgentClient::new(channel);
        Ok::<_, Box<dyn std::error::Error>>(client.get_capacity(pb::GetCapacityRequest {}).await?)
    }
    .await;
    assert!(
        result.is_err(),
        "a client without certificate got an answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_gets_no_rpc() {
    let harness = Harness::start(|_| {}).await;
    let stranger = DevCerts::generate().unwrap();
    let pair = stranger.client(Role::Admin);
    let result = async {
        let channel = harness
            .channel(harness.tls(Some((&pair.cert_pem, &pair.key_pem))))
            .await?;
        let mut client = AgentClient::new(channel);
        Ok::<_, Box<dyn std::error::Error>>(
            client
                .get_inventory(pb::GetInventoryRequest::default())
                .await?,
        )
    }
    .await;
    assert!(
        result.is_err(),
        "a certificate from another CA got an answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fields_are_invalid_argument_naming_the_field() {
    let harness = Harness::start(|c| c.telemetry.min_interval_millis = 500).await;
    let mut client = harness.client(Role::Admin).await;
    let status = client
        .watch_host_telemetry(pb::WatchHostTelemetryRequest {
            interval_millis: 100,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("interval_millis:"),
        "{}",
        status.message()
    );
    let status = client
        .get_attestation(pb::GetAttestationRequest {
            nonce: vec![1; 3],
            pcr_selection: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("nonce:"),
        "{}",
        status.message()
    );
    let status = client
        .get_attestation(pb::GetAttestationRequest {
            nonce: vec![1; 32],
            pcr_selection: Some(pb::PcrSelection {
                bank: 1,
                pcrs: vec![99],
            }),
        })
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("pcr_selection.pcrs:"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_fan_out_slow_subscriber_gets_gap_count() {
    let harness = Harness::start(|c| {
        c.telemetry.min_interval_millis = 10;
        c.telemetry.queue_depth = 2;
    })
    .await;
    let mut fast = harness.client(Role::Market).await;
    // Small receive windows, so few samples wait in transport buffers for the slow reader.
    let pair = harness.certs.client(Role::Market);
    let slow_channel = harness
        .channel_with_window(
            harness.tls(Some((&pair.cert_pem, &pair.key_pem))),
            Some(16 * 1024),
        )
        .await
        .unwrap();
    let mut slow = AgentClient::new(slow_channel);
    let request = pb::WatchHostTelemetryRequest {
        interval_millis: 10,
    };
    let mut fast_stream = fast
        .watch_host_telemetry(request)
        .await
        .unwrap()
        .into_inner();
    let mut slow_stream = slow
        .watch_host_telemetry(request)
        .await
        .unwrap()
        .into_inner();
    // The slow subscriber reads its first message, then nothing for a while.
    let first_slow = slow_stream.message().await.unwrap().unwrap();
    let mut previous = None;
    // More samples than HTTP/2 flow-control windows can hold in transit for the slow one.
    for _ in 0..150 {
        let msg = fast_stream.message().await.unwrap().unwrap();
        assert_eq!(msg.gap_count, 0, "the fast subscriber loses nothing");
        let seq = msg.sample.unwrap().sequence;
        if let Some(prev) = previous {
            assert_eq!(seq, prev + 1, "the fast subscriber sees every sample");
        }
        previous = Some(seq);
    }
    // HTTP/2 flow control lets a few messages sit in transport buffers; what did not fit was
    // dropped from the bounded queue and is reported in the next message.
    let mut gaps = 0;
    let mut last_seq = first_slow.sample.unwrap().sequence;
    while last_seq < previous.unwrap() {
        let msg = slow_stream.message().await.unwrap().unwrap();
        let seq = msg.sample.unwrap().sequence;
        assert_eq!(
            seq - last_seq - 1,
            msg.gap_count,
            "gap count equals the samples skipped"
        );
        gaps += msg.gap_count;
        last_seq = seq;
    }
    assert!(gaps > 0, "the slow subscriber was told about lost samples");
    let sample = fast_stream
        .message()
        .await
        .unwrap()
        .unwrap()
        .sample
        .unwrap();
    assert!(sample.cpu.unwrap().logical_cpus >= 1);
    assert!(sample.memory.unwrap().total_bytes > 0);
    assert!(sample.network.iter().any(|n| n.name == "lo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_watch_sends_current_then_each_change_with_sequence() {
    let harness = Harness::start(|c| c.capacity.reserve_cpu_millicores = 0).await;
    let mut client = harness.client(Role::Market).await;
    // Wait for the first inventory, so no background update races the test.
    client
        .get_inventory(pb::GetInventoryRequest::default())
        .await
        .unwrap();
    let mut stream = client
        .watch_capacity(pb::WatchCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().capacity.unwrap();
    let ledger = &harness.running().shared().capacity;
    assert_eq!(
        first.sequence,
        ledger.current().sequence,
        "the current state first"
    );
    for cpu in [100, 200] {
        ledger.set_allocations(Allocations {
            cpu_millicores: cpu,
            ..Allocations::default()
        });
        let next = stream.message().await.unwrap().unwrap().capacity.unwrap();
        assert_eq!(next.sequence, first.sequence + cpu / 100);
        assert_eq!(next.cpu_millicores.unwrap().allocated, cpu);
    }
    let get = client
        .get_capacity(pb::GetCapacityRequest {})
        .await
        .unwrap();
    assert_eq!(
        get.into_inner().capacity.unwrap().sequence,
        first.sequence + 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_is_structured_and_json() {
    let harness = Harness::start(|_| {}).await;
    let mut client = harness.client(Role::Auditor).await;
    let reply = client
        .get_inventory(pb::GetInventoryRequest { refresh: true })
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_slice(&reply.inventory_json).unwrap();
    let inventory = reply.inventory.unwrap();
    assert_eq!(json["format"], "fog-inventory-v1");
    assert_eq!(
        json["fingerprint"]["value"],
        inventory.fingerprint.unwrap().value
    );
    let cpu = inventory.cpu.unwrap();
    let probe = cpu.probe.unwrap();
    assert_eq!(
        probe.status != pb::ProbeStatus::Ok as i32,
        json["cpu"]["status"] != "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_is_the_admin_door() {
    use std::os::unix::fs::PermissionsExt;
    let harness = Harness::start(|_| {}).await;
    let path = harness.running().unix_socket().unwrap().to_owned();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut client = crate::support::unix_client(&path).await;
    // Admin only: past authorization, the request's own check answers.
    assert_eq!(
        call(&mut client, Rpc::RunBenchmarks).await,
        expected_when_allowed(Rpc::RunBenchmarks)
    );
    assert_eq!(call(&mut client, Rpc::GetCapacity).await, Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_within_the_grace_period() {
    let mut harness = Harness::start(|c| c.telemetry.min_interval_millis = 50).await;
    let mut client = harness.client(Role::Market).await;
    let mut telemetry = client
        .watch_host_telemetry(pb::WatchHostTelemetryRequest {
            interval_millis: 50,
        })
        .await
        .unwrap()
        .into_inner();
    let mut capacity = client
        .watch_capacity(pb::WatchCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    telemetry.message().await.unwrap().unwrap();
    capacity.message().await.unwrap().unwrap();
    let start = Instant::now();
    let drained = harness.daemon.take().unwrap().shutdown().await;
    assert!(drained, "streams ended within the grace period");
    assert!(start.elapsed() < Duration::from_secs(2));
    // Both streams end (cleanly or with a transport error), none hangs.
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = telemetry.message().await {}
        while let Ok(Some(_)) = capacity.message().await {}
    })
    .await;
    assert!(end.is_ok());
    assert!(
        !harness.dir.path().join("run/agent.sock").exists(),
        "socket removed"
    );
}

// ---- config files through the binary ----

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn check_config(path: &Path) -> (bool, String) {
    let output = agent().arg("check-config").arg(path).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_shipped_default_and_valid_fixtures() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    for path in [
        shipped,
        fixture("valid-production.toml"),
        fixture("valid-dev-loopback.toml"),
    ] {
        let (ok, stderr) = check_config(&path);
        assert!(ok, "{}: {stderr}", path.display());
    }
}

#[test]
fn check_config_names_each_bad_key() {
    let cases: [(&str, &[&str]); 4] = [
        (
            "invalid-unknown-key.toml",
            &[":3:1: api.listen_port: unknown field `listen_port`"],
        ),
        (
            "invalid-type.toml",
            &[":2:", "telemetry.min_interval_millis:"],
        ),
        ("invalid-syntax.toml", &[":1:"]),
        (
            "invalid-values.toml",
            &[
                "api.insecure_loopback: plaintext is allowed on loopback addresses only",
                "api.max_concurrent_streams: 0 is outside",
                "state.dir: must be an absolute path",
                "tpm.tcti:",
                "telemetry.min_interval_millis: 1 is outside",
                "telemetry.queue_depth: 0 is outside",
                "capacity.reserve_gpus: \"gpu0\"",
                "jobs.runtime: must be an absolute path",
                "jobs.telemetry_interval_millis: 5 is outside",
            ],
        ),
    ];
    for (name, expected) in cases {
        let (ok, stderr) = check_config(&fixture(name));
        assert!(!ok, "{name} was accepted");
        for needle in expected {
            assert!(
                stderr.contains(needle),
                "{name}: {needle:?} not in {stderr}"
            );
        }
    }
}

// ---- the binary, a Python client and grpcurl ----

/// The test venv: `<repo>/target/py-venv` (made by `packaging/setup-debian.sh --test`), or
/// `FOG_PY_VENV` for local runs.
fn venv() -> PathBuf {
    let venv = std::env::var_os("FOG_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv"));
    assert!(
        venv.join("bin/python").exists(),
        "no Python venv at {} (run packaging/setup-debian.sh --test, or set FOG_PY_VENV)",
        venv.display()
    );
    venv
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fog-agent serve` on a free loopback port; killed (SIGTERM) on drop.
struct Served {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Served {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let status = agent()
            .args(["dev-certs", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let port = free_port();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = [\"127.0.0.1:{port}\"]\nunix_socket = \"{d}/run/agent.sock\"\n\
                 tls_cert = \"{c}/server.pem\"\ntls_key = \"{c}/server.key\"\nclient_ca = \"{c}/ca.pem\"\n\
                 [state]\ndir = \"{d}/state\"\n[telemetry]\nmin_interval_millis = 100\n\
                 [bench]\nrun_on_start = false\n[tpm]\ntcti = \"{NO_TPM_TCTI}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n",
                d = dir.path().display(),
                c = certs.display()
            ),
        )
        .unwrap();
        let child = agent()
            .args(["serve", "--config"])
            .arg(&config)
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "fog-agent serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, dir, port }
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        crate::support::terminate(&mut self.child)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn python_client_and_grpcurl_over_mtls_against_the_binary() {
    let venv = venv();
    let mut served = Served::start();
    let certs = served.certs();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(venv.join("bin/python"))
        .arg(repo.join("agent/tests/py/daemon_client.py"))
        .args(["--addr", &format!("127.0.0.1:{}", served.port)])
        .arg("--certs")
        .arg(&certs)
        .arg("--proto-dir")
        .arg(repo.join("proto"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let grpcurl = |args: &[&str], with_cert: bool| {
        let mut command = Command::new(venv.join("bin/grpcurl"));
        command.arg("-cacert").arg(certs.join("ca.pem"));
        if with_cert {
            command
                .arg("-cert")
                .arg(certs.join("market.pem"))
                .arg("-key")
                .arg(certs.join("market.key"));
        }
        command.args(args).output().unwrap()
    };
    let target = format!("127.0.0.1:{}", served.port);
    let list = grpcurl(&[&target, "list"], true);
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "grpcurl list: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    for service in ["fog.agent.v1.Agent", "grpc.health.v1.Health"] {
        assert!(
            stdout.lines().any(|l| l == service),
            "{service} not listed: {stdout}"
        );
    }
    let health = grpcurl(
        &[
            "-d",
            r#"{"service":"fog.agent.v1.Agent"}"#,
            &target,
            "grpc.health.v1.Health/Check",
        ],
        true,
    );
    assert!(
        String::from_utf8_lossy(&health.stdout).contains("SERVING"),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let describe = grpcurl(&[&target, "describe", "fog.agent.v1.Agent"], true);
    assert!(String::from_utf8_lossy(&describe.stdout).contains("WatchHostTelemetry"));
    let refused = grpcurl(&[&target, "list"], false);
    assert!(
        !refused.status.success(),
        "grpcurl without a client certificate was served"
    );

    let status = served.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn serve_dev_makes_certificates_and_answers_the_printed_client_command() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // --dev keeps the default listen address; use a free port through a config file.
    let port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = [\"127.0.0.1:{port}\"]\n[bench]\nrun_on_start = false\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let child = agent()
        .args(["serve", "--dev", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve --dev did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let certs = state.join("dev-certs");
    let output = agent()
        .args(["client", "--addr", &format!("https://127.0.0.1:{port}")])
        .arg("--ca")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("market.pem"))
        .arg("--key")
        .arg(certs.join("market.key"))
        .args(["capacity", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let capacity: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        capacity["sequence"].is_string(),
        "proto3 JSON uint64: {capacity}"
    );
    assert!(
        state.join("agent.sock").exists(),
        "admin socket under the state dir"
    );
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fog-agent client --addr"),
        "quick-start hint printed: {stderr}"
    );
}
