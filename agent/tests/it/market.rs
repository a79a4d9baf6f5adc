//! The market link end to end: the agent (the daemon in-process, real loopback mutual TLS with
//! certificates from dev-certs' code) dials Python markets that are the tunnel's client:
//! docs/market-example.py and agent/tests/py/tunnel_market.py on grpctunnel-py 0.3.0 (the
//! protocol's own library, ordinary generated stubs), and agent/tests/py/scripted_market.py,
//! which scripts the tunnel's frames itself and checks each frame the agent answers with; a TPM
//! attestation fetched through the tunnel; the link authenticated by the TPM identity key (and
//! refused from a state directory copied to another TPM); and a restart as the market sees it
//! (the agent's side of faults and refused certificates is in `market_faults.rs`).
//!
//! The markets run in the test venv (`<repo>/target/py-venv` or `FOG_PY_VENV`, with
//! packaging/test-requirements.txt); without one that has grpctunnel-py the tests skip (and
//! fail in CI). A failed scenario's detail and the market's log are in the panic message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use fog_agent::api::tls::DevCerts;
use fog_agent::config::{ByteSize, Config};
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_tunnel::LinkStatus;

use crate::support::skip;

/// The host id the agent's certificate names (`fog://agent/market-it-host`).
const HOST_ID: &str = "market-it-host";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The venv's Python if it has grpctunnel-py and grpcio-tools; else None after the skip.
fn python(test: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("FOG_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/py-venv"));
    let python = venv.join("bin/python");
    let usable = Command::new(&python)
        .args(["-c", "import grpctunnel, grpc_tools"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !usable {
        skip(
            test,
            &format!(
                "no Python venv with grpctunnel-py at {} (run packaging/setup-debian.sh --test, or set FOG_PY_VENV)",
                venv.display()
            ),
        );
        return None;
    }
    Some(python)
}

/// Writes a fresh dev-certs set for [`HOST_ID`] into `dir/certs` and returns that directory.
/// A temporary dir with the development certificates (see [`write_certs`]), and the market's
/// server certificate, key and CA in it.
fn market_files() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let certs = write_certs(dir.path());
    let (cert, key, ca) = (
        certs.join("market-server.pem"),
        certs.join("market-server.key"),
        certs.join("ca.pem"),
    );
    (dir, certs, cert, key, ca)
}

fn write_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    DevCerts::generate_for(HOST_ID)
        .unwrap()
        .write_to(&certs)
        .unwrap();
    certs
}

/// A Python market serving on 127.0.0.1; killed on drop.
struct Market {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Market {
    /// Runs `script` (relative to the repository) with its server certificate `cert`/`key`,
    /// the agents' CA `ca`, on `listen` ("127.0.0.1:0": any port), and waits for its port.
    fn spawn(
        python: &Path,
        script: &str,
        dir: &Path,
        (cert, key, ca): (&Path, &Path, &Path),
        listen: &str,
        args: &[&str],
    ) -> Self {
        let name = Path::new(script).file_stem().unwrap().to_string_lossy();
        let port_file = dir.join(format!("{name}.port"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(python)
            .arg(repo().join(script))
            .args(["--listen", listen, "--port-file"])
            .arg(&port_file)
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--ca")
            .arg(ca)
            .arg("--proto-dir")
            .arg(repo().join("proto"))
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut market = Self {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                market.port = port;
                return market;
            }
            if let Some(status) = market.child.try_wait().unwrap() {
                panic!(
                    "{script} exited ({status}) before listening:\n{}",
                    market.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{script} did not listen within 30 s:\n{}",
                market.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the market to exit by itself (killed and a failure after `timeout`).
    async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the market did not finish within {timeout:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Drop for Market {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sets the market link of `config` to 127.0.0.1:`port`, trusting `market_ca`, with the
/// agent certificate of `certs`; reconnects within a second.
fn link(config: &mut Config, certs: &Path, port: u16, market_ca: &Path) {
    let market = &mut config.market;
    market.endpoints = vec![format!("https://127.0.0.1:{port}")];
    market.ca = market_ca.to_owned();
    market.client_cert = certs.join("agent.pem");
    market.client_key = certs.join("agent.key");
    market.reconnect_min_millis = 200;
    market.reconnect_max_millis = 1000;
    market.reconnect_spread_millis = 200;
    market.connect_timeout_millis = 5000;
    config.telemetry.min_interval_millis = 100;
}

/// The daemon of `support::mtls_config(dir)` with its market link to `port`.
async fn start_agent(
    dir: &Path,
    port: u16,
    market_ca: &Path,
    tweak: impl FnOnce(&mut Config),
) -> RunningDaemon {
    let mut config = crate::support::mtls_config(dir);
    link(&mut config, &dir.join("certs"), port, market_ca);
    tweak(&mut config);
    let options =
        DaemonOptions::for_host(&config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent"))).unwrap();
    daemon::start(&config, options).await.unwrap()
}

/// Every scenario of `results` (the markets' JSON) is there and ok.
fn assert_scenarios(market: &Market, results: &Path, scenarios: &[&str]) {
    let text = std::fs::read_to_string(results).unwrap_or_else(|err| {
        panic!(
            "no results at {} ({err}):\n{}",
            results.display(),
            market.log()
        )
    });
    let results: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut failed = Vec::new();
    for name in scenarios {
        match results.get(name) {
            None => failed.push(format!("{name}: not run")),
            Some(result) if result["ok"] != serde_json::Value::Bool(true) => {
                failed.push(format!("{name}: {}", result["detail"]));
            }
            Some(_) => {}
        }
    }
    assert!(
        failed.is_empty(),
        "scenarios failed:\n{}\n\nmarket log:\n{}",
        failed.join("\n"),
        market.log()
    );
}

/// Waits until the first endpoint's status satisfies `done`.
async fn wait_link(
    daemon: &RunningDaemon,
    timeout: Duration,
    what: &str,
    done: impl Fn(&LinkStatus) -> bool,
) -> LinkStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let status = daemon.market_links().remove(0);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_market_calls_the_agent_through_its_tunnel() {
    let Some(python) = python("the_example_market_calls_the_agent_through_its_tunnel") else {
        return;
    };
    let (dir, _, cert, key, ca) = market_files();
    let mut market = Market::spawn(
        &python,
        "docs/market-example.py",
        dir.path(),
        (&cert, &key, &ca),
        "127.0.0.1:0",
        &["--agent", HOST_ID, "--timeout", "60"],
    );
    let daemon = start_agent(dir.path(), market.port, &ca, |_| {}).await;
    let status = market.wait(Duration::from_secs(180)).await;
    let log = market.log();
    assert!(status.success(), "market-example.py: {status}:\n{log}");
    for call in [
        "GetInventory: fog-inventory-v1",
        "GetCapacity",
        "WatchHostTelemetry",
        "WatchCapacity",
    ] {
        assert!(log.contains(call), "{call:?} not in:\n{log}");
    }
    assert!(
        log.contains(&format!("tunnel connected: fog://agent/{HOST_ID}")),
        "{log}"
    );
    let link = daemon.market_links().remove(0);
    assert!(link.connects >= 1 && link.role == "market", "{link:?}");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_market_scenarios_through_the_agent() {
    let Some(python) = python("tunnel_market_scenarios_through_the_agent") else {
        return;
    };
    let (dir, _, cert, key, ca) = market_files();
    let results = dir.path().join("results.json");
    let scenarios = [
        "inventory",
        "capacity",
        "telemetry",
        "watch_capacity",
        "attestation",
        "empty_request",
        "over_limit",
        "unknown_method",
        "admin_only",
    ];
    let list = scenarios.join(",");
    let limit = 256 * 1024;
    let limit_arg = limit.to_string();
    let mut market = Market::spawn(
        &python,
        "agent/tests/py/tunnel_market.py",
        dir.path(),
        (&cert, &key, &ca),
        "127.0.0.1:0",
        &[
            "--agent",
            HOST_ID,
            "--scenarios",
            &list,
            "--results",
            results.to_str().unwrap(),
            // The test daemon's TPM is unreachable (support::NO_TPM_TCTI).
            "--attestation-expect",
            "UNAVAILABLE",
            "--max-message-bytes",
            &limit_arg,
            "--timeout",
            "60",
        ],
    );
    let daemon = start_agent(dir.path(), market.port, &ca, |config| {
        config.api.max_message_bytes = ByteSize(limit);
    })
    .await;
    let status = market.wait(Duration::from_secs(300)).await;
    assert_scenarios(&market, &results, &scenarios);
    assert!(
        status.success(),
        "tunnel_market.py: {status}:\n{}",
        market.log()
    );
    let link = daemon.market_links().remove(0);
    assert!(
        link.streams_total >= 10 && link.bytes_in >= limit,
        "{link:?}"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_market_runs_a_job_and_reads_a_mebibyte_of_its_logs() {
    let Some(python) = python("tunnel_market_runs_a_job_and_reads_a_mebibyte_of_its_logs") else {
        return;
    };
    let (dir, certs, cert, key, ca) = market_files();
    // The port is chosen first: the agent (a jobs harness, runc and busybox) is configured with
    // it and dials until the market listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut harness = crate::jobs::Harness::start_configured(
        |config| link(config, &certs, port, &certs.join("ca.pem")),
        |_, options| options,
    )
    .await;
    // 11,000 lines of 101 bytes, over before the market asks for them.
    let big = crate::jobs::unique("market-logs");
    let line = "0123456789".repeat(10);
    crate::jobs::start(
        &mut harness.client,
        crate::jobs::spec(&big, &format!("yes {line} | head -n 11000")),
    )
    .await;
    let job = crate::jobs::wait_for(
        &mut harness.client,
        &big,
        Duration::from_secs(60),
        crate::jobs::ended,
    )
    .await;
    assert_eq!(job.exit_code, Some(0), "{job:?}");

    let job_id = crate::jobs::unique("market-job");
    let spec = serde_json::json!({
        "jobId": job_id,
        "image": "busybox:latest",
        "command": ["/bin/sh", "-c", "echo hello-from-the-market; sleep 60"],
        "resources": {"cpuMillicores": 500, "memoryBytes": 64 << 20, "pids": 64},
    })
    .to_string();
    let results = dir.path().join("results.json");
    let large = format!("joblogs:{big}");
    let mut market = Market::spawn(
        &python,
        "agent/tests/py/tunnel_market.py",
        dir.path(),
        (&cert, &key, &ca),
        &format!("127.0.0.1:{port}"),
        &[
            "--agent",
            HOST_ID,
            "--scenarios",
            "job,large_response",
            "--results",
            results.to_str().unwrap(),
            "--job-spec-json",
            &spec,
            "--job-log-contains",
            "hello-from-the-market",
            "--large-response",
            &large,
            // Reading 11,000 log messages is pure-Python work in grpctunnel-py: seconds on an
            // idle machine, far more beside a release build on both cores.
            "--timeout",
            "180",
        ],
    );
    let status = market.wait(Duration::from_secs(400)).await;
    assert_scenarios(&market, &results, &["job", "large_response"]);
    assert!(
        status.success(),
        "tunnel_market.py: {status}:\n{}",
        market.log()
    );
    let stopped = crate::jobs::get(&mut harness.client, &job_id).await;
    assert!(crate::jobs::ended(&stopped), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_market_conformance() {
    let Some(python) = python("scripted_market_conformance") else {
        return;
    };
    let (dir, _, cert, key, ca) = market_files();
    let results = dir.path().join("results.json");
    let mut market = Market::spawn(
        &python,
        "agent/tests/py/scripted_market.py",
        dir.path(),
        (&cert, &key, &ca),
        "127.0.0.1:0",
        &[
            "--results",
            results.to_str().unwrap(),
            "--max-streams",
            "16",
            "--stream-idle-timeout-millis",
            "1500",
            "--timeout",
            "20",
            "--reconnect-seconds",
            "10",
        ],
    );
    let daemon = start_agent(dir.path(), market.port, &ca, |config| {
        config.market.max_streams = 16;
        config.market.stream_idle_timeout_millis = 1500;
    })
    .await;
    let status = market.wait(Duration::from_secs(600)).await;
    assert_scenarios(
        &market,
        &results,
        &[
            "rev0",
            "settings_first",
            "tiny_window",
            "overrun",
            "slow_and_fast",
            "duplicate_id",
            "lower_id",
            "unknown_stream",
            "late_frames",
            "boundary_16k",
            "cancel",
            "grpc_timeout",
            "empty_request",
            "revision_2",
            "unknown_method",
            "max_streams",
            "idle_timeout",
        ],
    );
    assert!(
        status.success(),
        "scripted_market.py: {status}:\n{}",
        market.log()
    );
    daemon.shutdown().await;
}

/// A tunnel_market in `--serve-only` mode with the server certificate `cert`/`key`.
fn serve_only(python: &Path, dir: &Path, certs: &Path, cert: &Path, key: &Path) -> Market {
    let events = dir.join("events.jsonl");
    Market::spawn(
        python,
        "agent/tests/py/tunnel_market.py",
        dir,
        (cert, key, &certs.join("ca.pem")),
        "127.0.0.1:0",
        &["--serve-only", "--events", events.to_str().unwrap()],
    )
}

/// The events a `--serve-only` market wrote, by name.
fn events(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["event"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_market_sees_the_tunnel_come_back_after_its_restart_and_end_at_shutdown() {
    let Some(python) =
        python("the_market_sees_the_tunnel_come_back_after_its_restart_and_end_at_shutdown")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = write_certs(dir.path());
    let market = serve_only(
        &python,
        dir.path(),
        &certs,
        &certs.join("market-server.pem"),
        &certs.join("market-server.key"),
    );
    let daemon = start_agent(dir.path(), market.port, &certs.join("ca.pem"), |_| {}).await;
    wait_link(&daemon, Duration::from_secs(20), "the tunnel", |s| s.up).await;

    market.signal(libc::SIGUSR2); // the market goes away
    wait_link(&daemon, Duration::from_secs(20), "the tunnel's loss", |s| {
        !s.up
    })
    .await;
    market.signal(libc::SIGUSR1); // and comes back on the same port
    let link = wait_link(&daemon, Duration::from_secs(20), "the tunnel back", |s| {
        s.up && s.connects == 2
    })
    .await;
    assert_eq!(link.role, "market");

    daemon.shutdown().await;
    // Each stop and start of the market, each tunnel open and end ("stopped" and its
    // "disconnected" may come in either order).
    let want = [
        ("listening", 2),
        ("connected", 2),
        ("stopped", 1),
        ("disconnected", 2),
    ];
    let count = |name: &str| events(dir.path()).iter().filter(|e| *e == name).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while want.iter().any(|(name, n)| count(name) != *n) {
        assert!(
            Instant::now() < deadline,
            "events {:?}, expected {want:?}:\n{}",
            events(dir.path()),
            market.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fog_agent(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fog-agent"))
        .args(args)
        .env_remove("FOG_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fog-agent {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_through_the_tunnel_verifies() {
    let Some(python) = python("an_attestation_through_the_tunnel_verifies") else {
        return;
    };
    let swtpm = fog_tpm::testing::Swtpm::start().unwrap();
    let tcti = swtpm.tcti().to_string();
    let dir = tempfile::tempdir().unwrap();
    let certs = write_certs(dir.path());
    let s = |path: &Path| path.to_str().unwrap().to_owned();
    // The agent's AK is enrolled with an auditor first (as in attest.rs), in the state dir
    // the daemon then uses; the daemon's host id is the machine id.
    let state = s(&dir.path().join("state"));
    let auditor = s(&dir.path().join("auditor"));
    let host_id = std::fs::read_to_string("/etc/machine-id")
        .unwrap()
        .trim()
        .to_owned();
    let anchors = s(&swtpm.trust_anchors_file().unwrap());
    crate::attest::enroll_through_the_cli(&swtpm, Path::new(&state), Path::new(&auditor), &host_id);

    let (cert, key, ca) = (
        certs.join("market-server.pem"),
        certs.join("market-server.key"),
        certs.join("ca.pem"),
    );
    let nonce = "00112233445566778899aabbccddeeff";
    let record = dir.path().join("attestation.json");
    let results = dir.path().join("results.json");
    let mut market = Market::spawn(
        &python,
        "agent/tests/py/tunnel_market.py",
        dir.path(),
        (&cert, &key, &ca),
        "127.0.0.1:0",
        &[
            "--agent",
            HOST_ID,
            "--scenarios",
            "attestation",
            "--nonce-hex",
            nonce,
            "--attestation-out",
            &s(&record),
            "--results",
            &s(&results),
            "--timeout",
            "120",
        ],
    );
    let daemon = start_agent(dir.path(), market.port, &ca, |config| {
        config.tpm.tcti = tcti.clone();
    })
    .await;
    let status = market.wait(Duration::from_secs(300)).await;
    assert_scenarios(&market, &results, &["attestation"]);
    assert!(status.success(), "{}", market.log());
    daemon.shutdown().await;

    // What the market received is what an auditor verifies.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    assert_eq!(record["format"], "fog-attest-v1");
    assert_eq!(record["host_id"], host_id.as_str());
    assert_eq!(record["nonce_hex"], nonce);
    let report = dir.path().join("report.json");
    std::fs::write(&report, record["report_json"].as_str().unwrap()).unwrap();
    let verdict = fog_agent(&[
        "verify",
        &s(&report),
        "--nonce",
        nonce,
        "--trust-anchors",
        &anchors,
        "--state-dir",
        &auditor,
        "--allow-software-tpm",
        "--json",
    ]);
    let verdict: serde_json::Value = serde_json::from_str(&verdict).unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_tunnels_end_at_the_market() {
    let Some(python) = python("rotated_tunnels_end_at_the_market") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let certs = write_certs(dir.path());
    let market = serve_only(
        &python,
        dir.path(),
        &certs,
        &certs.join("market-server.pem"),
        &certs.join("market-server.key"),
    );
    let daemon = start_agent(dir.path(), market.port, &certs.join("ca.pem"), |config| {
        config.market.rotate_after_millis = 1500;
        config.market.drain_millis = 300;
    })
    .await;
    wait_link(&daemon, Duration::from_secs(20), "three tunnels", |s| {
        s.connects >= 3
    })
    .await;
    // Each rotated tunnel must end at the market too (after its drain), or a market that
    // round-robins an agent's tunnels (grpctunnel-py's key_as_channel) picks dead ones.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let count = |name: &str| events(dir.path()).iter().filter(|e| *e == name).count();
    let (connected, disconnected) = (count("connected"), count("disconnected"));
    assert!(
        connected >= 3 && connected - disconnected <= 2,
        "{connected} tunnels opened, {disconnected} ended, at the market:\n{}",
        market.log()
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_market_link_authenticates_with_the_tpm_identity_key() {
    let test = "the_market_link_authenticates_with_the_tpm_identity_key";
    let Some(python) = python(test) else {
        return;
    };
    let swtpm = fog_tpm::testing::Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let dev = DevCerts::generate_for(HOST_ID).unwrap();
    dev.write_to(&certs).unwrap();
    std::fs::write(certs.join("ca.key"), &dev.ca.key_pem).unwrap();
    let s = |path: &Path| path.to_str().unwrap().to_owned();
    let state = dir.path().join("state");
    let auditor = dir.path().join("auditor");
    crate::attest::enroll_through_the_cli(&swtpm, &state, &auditor, HOST_ID);
    // The identity key's certificate from the CA the market trusts for agents.
    let nonce = "00112233445566778899aabbccddeeff";
    let request = dir.path().join("identity.json");
    let tpm_cert = certs.join("agent-tpm.pem");
    fog_agent(&[
        "attest",
        "identity-request",
        "--nonce",
        nonce,
        "--tcti",
        &swtpm.tcti().to_string(),
        "--state-dir",
        &s(&state),
        "--out",
        &s(&request),
    ]);
    fog_agent(&[
        "verify",
        "identity",
        &s(&request),
        "--nonce",
        nonce,
        "--state-dir",
        &s(&auditor),
        "--ca-cert",
        &s(&certs.join("ca.pem")),
        "--ca-key",
        &s(&certs.join("ca.key")),
        "--out",
        &s(&tpm_cert),
    ]);
    let (cert, key, ca) = (
        certs.join("market-server.pem"),
        certs.join("market-server.key"),
        certs.join("ca.pem"),
    );
    let mut market = Market::spawn(
        &python,
        "docs/market-example.py",
        dir.path(),
        (&cert, &key, &ca),
        "127.0.0.1:0",
        &["--agent", HOST_ID, "--timeout", "120"],
    );
    let use_tpm_key = |config: &mut Config, tcti: String| {
        config.tpm.tcti = tcti;
        config.market.client_cert = tpm_cert.clone();
        config.market.client_key = "tpm".into();
    };

    // The state directory copied next to another TPM: the handshake cannot be signed.
    let other = fog_tpm::testing::Swtpm::start().unwrap();
    let copied = tempfile::tempdir().unwrap();
    write_certs(copied.path());
    crate::identity::copy_dir(&state, &copied.path().join("state"));
    let impostor = start_agent(copied.path(), market.port, &ca, |config| {
        use_tpm_key(config, other.tcti().to_string());
    })
    .await;
    let status = wait_link(
        &impostor,
        Duration::from_secs(60),
        "a refused handshake",
        |s| s.failures >= 1,
    )
    .await;
    assert_eq!(status.connects, 0, "{status:?}");
    assert!(status.last_error.contains("TPM"), "{status:?}");
    impostor.shutdown().await;

    // The genuine host, same certificate, its own TPM.
    let daemon = start_agent(dir.path(), market.port, &ca, |config| {
        use_tpm_key(config, swtpm.tcti().to_string());
    })
    .await;
    let status = market.wait(Duration::from_secs(180)).await;
    let log = market.log();
    assert!(status.success(), "market-example.py: {status}:\n{log}");
    assert!(
        log.contains(&format!("tunnel connected: fog://agent/{HOST_ID}")),
        "{log}"
    );
    daemon.shutdown().await;
}
