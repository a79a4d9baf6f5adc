//! `fog-agent audit` against real agents: daemons serving mutual TLS on loopback, each with its
//! own swtpm. One command enrolls an unknown AK and verifies a fresh report; the next audit
//! only verifies, and names the PCRs that changed in between; `--targets` audits several agents
//! at once and reports an unreachable one as an error, not a pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fog_agent::api::tls::DevCerts;
use fog_agent::daemon::{self, DaemonOptions, RunningDaemon};
use fog_tpm::testing::Swtpm;

use crate::attest::{agent, ok, s};

/// An agent with its own software TPM, its AK made for `host_id`.
struct Agent {
    _swtpm: Swtpm,
    daemon: RunningDaemon,
    tcti: String,
}

impl Agent {
    async fn start(dir: &Path, certs: &Path, host_id: &str) -> Self {
        let swtpm = Swtpm::start().unwrap();
        let tcti = swtpm.tcti().to_string();
        let mut config = crate::support::mtls_config(dir);
        config.api.tls_cert = certs.join("server.pem");
        config.api.tls_key = certs.join("server.key");
        config.api.client_ca = certs.join("ca.pem");
        config.tpm.tcti = tcti.clone();
        // The AK (and so the host id the agent reports) is made ahead, as an operator would.
        std::fs::create_dir_all(&config.state.dir).unwrap();
        let req = dir.join("enroll-request.json");
        ok(&agent(&[
            "attest",
            "enroll-request",
            "--tcti",
            &tcti,
            "--state-dir",
            s(&config.state.dir),
            "--host-id",
            host_id,
            "--out",
            s(&req),
        ]));
        let options =
            DaemonOptions::for_host(&config, PathBuf::from(env!("CARGO_BIN_EXE_fog-agent")))
                .unwrap();
        let daemon = daemon::start(&config, options).await.unwrap();
        Self {
            _swtpm: swtpm,
            daemon,
            tcti,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.daemon.tcp_addrs()[0])
    }
}

/// Runs `fog-agent audit` off the async runtime (the daemons serve on it meanwhile).
async fn audit(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_command_enrolls_then_audits_and_a_fleet_run_names_each_host() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    DevCerts::generate().unwrap().write_to(&certs).unwrap();
    let a = Agent::start(&dir.path().join("a"), &certs, "host-a").await;
    let b = Agent::start(&dir.path().join("b"), &certs, "host-b").await;
    // Both software TPMs' CAs are trusted.
    let anchors = dir.path().join("anchors.pem");
    let mut pem = a._swtpm.trust_anchors_pem().unwrap();
    pem.extend(b._swtpm.trust_anchors_pem().unwrap());
    std::fs::write(&anchors, pem).unwrap();
    let state = dir.path().join("auditor");
    let (ca, cert, key) = (
        certs.join("ca.pem"),
        certs.join("auditor.pem"),
        certs.join("auditor.key"),
    );
    let common = |target: &[&str]| -> Vec<String> {
        let mut args = vec!["audit"];
        args.extend_from_slice(target);
        args.extend([
            "--ca",
            s(&ca),
            "--cert",
            s(&cert),
            "--key",
            s(&key),
            "--trust-anchors",
            s(&anchors),
            "--allow-software-tpm",
            "--state-dir",
            s(&state),
        ]);
        args.into_iter().map(str::to_owned).collect()
    };
    let json_of = |out: &Output| -> serde_json::Value { serde_json::from_str(&ok(out)).unwrap() };

    // First audit of host-a: enrolled, then verified.
    let url_a = a.url();
    let mut args = common(&["--addr", &url_a]);
    args.push("--json".into());
    let first = json_of(&audit(args.clone()).await);
    assert_eq!(first["ok"], true, "{first:#}");
    assert_eq!(first["host_id"], "host-a");
    assert_eq!(first["enrolled_now"], true);
    assert_eq!(first["verdict"]["checks"].as_array().unwrap().len(), 18);

    // Again: already enrolled, a fresh nonce, nothing changed.
    let again = json_of(&audit(args.clone()).await);
    assert_eq!(
        (again["ok"].clone(), again["enrolled_now"].clone()),
        (true.into(), false.into()),
        "{again:#}"
    );
    assert_eq!(again["changed_pcrs"], serde_json::json!([]));

    // A measurement between two audits shows as a changed PCR.
    let extended = Command::new("tpm2_pcrextend")
        .args(["-T", &a.tcti])
        .arg(format!("7:sha256={}", "ab".repeat(32)))
        .output()
        .unwrap();
    assert!(extended.status.success(), "{extended:?}");
    let changed = json_of(&audit(args).await);
    assert_eq!(changed["ok"], true, "{changed:#}");
    assert_eq!(changed["changed_pcrs"], serde_json::json!(["sha256:7"]));

    // The fleet: host-a, host-b (enrolled on the way) and an address where nothing listens.
    let targets = dir.path().join("targets");
    std::fs::write(
        &targets,
        format!(
            "# the fleet\n{}\n{}\n\nhttps://127.0.0.1:1  # gone\n",
            a.url(),
            b.url()
        ),
    )
    .unwrap();
    let out = audit(common(&["--targets", s(&targets)])).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "one host is unreachable: {table}"
    );
    assert!(table.contains("2/3 hosts accepted"), "{table}");
    let row = |host: &str| {
        table
            .lines()
            .find(|l| l.contains(host))
            .unwrap_or_else(|| panic!("no row for {host}: {table}"))
            .to_owned()
    };
    assert!(row("host-a").contains("accepted"), "{table}");
    assert!(row("host-b").contains("accepted"), "{table}");
    assert!(row("127.0.0.1:1").contains("ERROR"), "{table}");

    a.daemon.shutdown().await;
    b.daemon.shutdown().await;
}
