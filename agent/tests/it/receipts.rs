//! Usage receipts end to end: jobs run by the in-process daemon with real runc (the jobs tests'
//! harness), receipts signed by the identity key of a real swtpm whose AK was enrolled through
//! the CLI, fetched with GetReceipts and WatchReceipts, and verified by `fog-agent verify
//! receipts`. In one test the TPM is reached through a loopback proxy the test cuts, to show
//! that a TPM that goes away delays no StartJob and loses no receipt. The tests run one at a
//! time.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fog_agent::config::Config;
use fog_agent::daemon::DaemonOptions;
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use fog_tpm::receipt::{ReceiptBody, ReceiptBundle, ReceiptKind};
use fog_tpm::testing::Swtpm;
use tonic::transport::Channel;
use tonic::Code;

use crate::attest::{agent, ok, s};
use crate::jobs::{self, Harness};

/// A loopback TCP proxy in front of swtpm's command and control ports (two adjacent ports, as
/// the swtpm TCTI expects), which refuses connections while it is down.
struct TpmProxy {
    port: u16,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl TpmProxy {
    fn start(target: u16) -> Self {
        // Below the ephemeral range (32768 and up), where swtpm's harness and every outgoing
        // connection take their ports: nothing else grabs these while the proxy is down, and
        // the proxy never takes a port a concurrent test's swtpm just picked.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let (port, listeners) = (0..1000)
            .find_map(|i| {
                let port = 20_000 + ((seed as usize + i * 7919) % 12_000) as u16;
                let a = TcpListener::bind(("127.0.0.1", port)).ok()?;
                let b = TcpListener::bind(("127.0.0.1", port + 1)).ok()?;
                Some((port, [a, b]))
            })
            .expect("two free adjacent ports below 32000");
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        for (i, listener) in listeners.into_iter().enumerate() {
            let (up, stop) = (up.clone(), stop.clone());
            let (from, to) = (port + i as u16, target + i as u16);
            std::thread::spawn(move || serve(listener, from, to, &up, &stop));
        }
        Self { port, up, stop }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Cuts the TPM off (new connections are refused) or brings it back.
    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        // Let the listener threads close or reopen their ports.
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for TpmProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Accepts on `listener` while up and forwards each connection to `to`; while down the port
/// is closed (connections refused) and bound again once up.
fn serve(listener: TcpListener, from: u16, to: u16, up: &AtomicBool, stop: &AtomicBool) {
    let mut listener = Some(listener);
    while !stop.load(Ordering::SeqCst) {
        if !up.load(Ordering::SeqCst) {
            listener = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let Some(l) = listener.as_ref() else {
            listener = TcpListener::bind(("127.0.0.1", from)).ok();
            if let Some(l) = &listener {
                l.set_nonblocking(true).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((client, _)) => {
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c1, mut s1) = (client, server);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// These tests one at a time: each drives its own swtpm hard (a signature per receipt, a quote a
/// second, bundles polled), and swtpm serves one connection at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The test's TPM, auditor and agent.
struct Setup {
    // Dropped first (the harness before the TPM).
    harness: Harness,
    proxy: Option<TpmProxy>,
    auditor: tempfile::TempDir,
    swtpm: Swtpm,
    _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
}

/// swtpm (behind a proxy the test can cut with `proxied`), a daemon with receipts every
/// `interval_secs` of run time and quotes every `quote_interval_secs` (GetReceipts quotes what
/// is unquoted in any case), its AK enrolled; None (after saying why) without swtpm.
async fn setup(
    test: &str,
    interval_secs: u64,
    quote_interval_secs: u64,
    proxied: bool,
) -> Option<Setup> {
    setup_with(test, interval_secs, quote_interval_secs, proxied, |_, o| o).await
}

/// [`setup`] with the daemon's options changed by `adjust` (it gets the harness's temp dir).
async fn setup_with(
    test: &str,
    interval_secs: u64,
    quote_interval_secs: u64,
    proxied: bool,
    adjust: impl FnOnce(&Path, DaemonOptions) -> DaemonOptions,
) -> Option<Setup> {
    let one_at_a_time = ONE_AT_A_TIME.lock().await;
    let swtpm = match Swtpm::start() {
        Ok(swtpm) => swtpm,
        Err(err) => {
            crate::support::skip(test, &format!("swtpm cannot start: {err}"));
            return None;
        }
    };
    let fog_tpm::tcti::Tcti::Swtpm { port, .. } = swtpm.tcti() else {
        unreachable!("the harness serves swtpm")
    };
    let proxy = proxied.then(|| TpmProxy::start(port));
    let tcti = proxy
        .as_ref()
        .map_or_else(|| swtpm.tcti().to_string(), TpmProxy::tcti);
    let harness = Harness::start_configured(
        |config: &mut Config| {
            config.tpm.tcti = tcti.clone();
            config.receipts.interval_secs = interval_secs;
            config.receipts.quote_interval_secs = quote_interval_secs;
        },
        adjust,
    )
    .await;
    let auditor = tempfile::tempdir().unwrap();
    crate::attest::enroll_through_the_cli(
        &swtpm,
        &harness.config.state.dir,
        auditor.path(),
        "receipts-host",
    );
    Some(Setup {
        harness,
        proxy,
        auditor,
        swtpm,
        _one_at_a_time: one_at_a_time,
    })
}

impl Setup {
    fn client(&mut self) -> &mut AgentClient<Channel> {
        &mut self.harness.client
    }

    /// `verify receipts` of `bundle`: (passed, failed check ids).
    fn verify(&self, bundle: &[u8]) -> (bool, Vec<String>) {
        let file = self
            .swtpm
            .scratch(&format!("bundle-{}.json", jobs::unique("b")));
        std::fs::write(&file, bundle).unwrap();
        let anchors = self.swtpm.trust_anchors_file().unwrap();
        let out = agent(&[
            "verify",
            "receipts",
            s(&file),
            "--trust-anchors",
            s(&anchors),
            "--allow-software-tpm",
            "--state-dir",
            s(self.auditor.path()),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "verdict not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let failed = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| format!("{}: {}", c["id"].as_str().unwrap(), c["reason"]))
            .collect();
        let passed = v["passed"] == true;
        assert_eq!(
            out.status.success(),
            passed,
            "exit code follows the verdict"
        );
        (passed, failed)
    }
}

async fn get_receipts(
    client: &mut AgentClient<Channel>,
    id: &str,
) -> Result<pb::GetReceiptsResponse, tonic::Status> {
    client
        .get_receipts(pb::GetReceiptsRequest {
            job_id: id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn bodies(bundle: &ReceiptBundle) -> Vec<ReceiptBody> {
    bundle
        .receipts
        .iter()
        .map(|r| ReceiptBody::from_bytes(&r.body).unwrap())
        .collect()
}

/// The job's bundle once its end receipt is signed: WatchReceipts until the end receipt (at
/// most a minute per receipt), then one GetReceipts.
async fn final_bundle(client: &mut AgentClient<Channel>, id: &str) -> (Vec<u8>, ReceiptBundle) {
    let mut stream = client
        .watch_receipts(pb::WatchReceiptsRequest {
            job_id: id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .unwrap_or_else(|_| panic!("no receipt of {id} within a minute after {kinds:?}"))
        .unwrap()
    {
        kinds.push(event.kind);
    }
    assert_eq!(kinds.last().map(String::as_str), Some("end"), "{kinds:?}");
    let reply = get_receipts(client, id).await.unwrap();
    let bundle = ReceiptBundle::from_json(&reply.bundle_json).unwrap();
    assert_eq!(reply.receipts as usize, bundle.receipts.len());
    assert_eq!(bundle.receipts.len(), kinds.len());
    (reply.bundle_json, bundle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_start_periodic_and_end_receipts_that_verify_and_stream() {
    let Some(mut t) = setup("receipts_verify_and_stream", 1, 1, false).await else {
        return;
    };
    let id = jobs::unique("rcpt");
    // Runs until the test has seen two periodic receipts, then is stopped.
    let mut spec = jobs::spec(&id, "sleep 600");
    spec.labels.insert("deal".into(), "d-42".into());
    let started = jobs::start(t.client(), spec).await;
    assert_eq!(started.job.unwrap().state(), pb::JobState::Running);

    // The stream: every receipt once, in order, ending after the end receipt.
    let mut stream = t
        .client()
        .watch_receipts(pb::WatchReceiptsRequest { job_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut stopper = t.client().clone();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), stream.message())
        .await
        .expect("a receipt within a minute")
        .unwrap()
    {
        assert_eq!(event.job_id, id);
        assert_eq!(event.seq, streamed.len() as u64);
        streamed.push(event);
        if streamed.len() == 3 {
            jobs::stop(&mut stopper, &id).await;
        }
    }
    let kinds: Vec<&str> = streamed.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[..3], ["start", "periodic", "periodic"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");

    let (json, bundle) = final_bundle(t.client(), &id).await;
    assert_eq!(bundle.receipts.len(), streamed.len());
    for (event, receipt) in streamed.iter().zip(&bundle.receipts) {
        let signed: fog_tpm::receipt::SignedReceipt =
            serde_json::from_slice(&event.signed_receipt_json).unwrap();
        assert_eq!(&signed, receipt, "the stream carries the bundle's receipts");
    }
    let last = bodies(&bundle).pop().unwrap();
    assert_eq!(last.termination.as_deref(), Some("stop_requested"));
    assert_eq!(last.labels["deal"], "d-42");
    assert_eq!(bundle.host_id, "receipts-host");
    assert!(last.usage.run_millis >= 2_000, "{:?}", last.usage);
    let (passed, failed) = t.verify(&json);
    assert!(passed, "{failed:?}");

    // A tampered counter is caught.
    let mut tampered = bundle.clone();
    let mut body = ReceiptBody::from_bytes(&tampered.receipts[1].body).unwrap();
    body.usage.cpu_nanos += 1;
    tampered.receipts[1].body = body.to_bytes();
    let (passed, failed) = t.verify(&tampered.to_json());
    assert!(
        !passed && failed.iter().any(|f| f.starts_with("receipt_signature")),
        "{failed:?}"
    );

    // Bad requests.
    let err = get_receipts(t.client(), "../x").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("job_id"), "{}", err.message());
    let err = get_receipts(t.client(), "no-such-job").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    let err = t
        .client()
        .watch_receipts(pb::WatchReceiptsRequest {
            job_id: "no-such-job".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
}

/// A GPU job's receipts carry its GPU time under the card's NVML UUID: the simulated NVML
/// library's accounting record of the job's container process, as in the jobs tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_jobs_receipts_carry_its_gpu_time_by_uuid() {
    const BUS: &str = "0000:17:00.0";
    const UUID: &str = "GPU-6f1c9a2e-0d3b-4c1e-9a7f-2b5d8e4c1a90";
    let (sim_dir, sim_lib) = crate::gpu::sim_with_mode("acct_off");
    let Some(mut t) = setup_with("receipts_gpu_time", 600, 600, false, |dir, options| {
        jobs::with_a_simulated_gpu(dir, options, BUS, Some(UUID), sim_lib)
    })
    .await
    else {
        return;
    };
    assert_eq!(jobs::wait_capacity_gpus(t.client()).await, [BUS]);
    let id = jobs::unique("rcpt-gpu");
    let mut spec = jobs::spec(&id, "sleep 600");
    spec.resources.as_mut().unwrap().gpus = vec![BUS.to_owned()];
    let started = jobs::start(t.client(), spec).await;
    assert_eq!(started.job.unwrap().state(), pb::JobState::Running);
    jobs::nvml_accounts(sim_dir.path(), jobs::job_pid(&t.harness, &id));
    jobs::wait_for(t.client(), &id, Duration::from_secs(20), |j| {
        j.usage
            .as_ref()
            .is_some_and(|u| u.gpus.iter().any(|g| g.gpu_seconds >= 1.0))
    })
    .await;
    jobs::stop(t.client(), &id).await;

    let (json, bundle) = final_bundle(t.client(), &id).await;
    let usage = jobs::get(t.client(), &id).await.usage.unwrap();
    let end = bodies(&bundle).pop().unwrap();
    assert_eq!(
        end.usage.gpu_millis.keys().collect::<Vec<_>>(),
        [UUID],
        "{:?}",
        end.usage
    );
    let millis = end.usage.gpu_millis[UUID];
    assert!(millis >= 1_000, "{:?}", end.usage);
    assert_eq!(
        millis,
        (usage.gpus[0].gpu_seconds * 1000.0).round() as u64,
        "the end receipt has the job's final GPU time: {usage:?}"
    );
    let (passed, failed) = t.verify(&json);
    assert!(passed, "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_tpm_jobs_start_and_receipts_wait_until_it_is_back() {
    let Some(mut t) = setup("receipts_without_the_tpm", 600, 3600, true).await else {
        return;
    };
    t.proxy.as_ref().unwrap().set_up(false);
    let id = jobs::unique("rcpt-notpm");
    // StartJob answers while no TPM can be reached (no timing asserted: it answers at all, RUNNING).
    let started = jobs::start(t.client(), jobs::spec(&id, "sleep 1")).await;
    assert_eq!(started.job.unwrap().state(), pb::JobState::Running);
    jobs::wait_for(t.client(), &id, Duration::from_secs(30), jobs::ended).await;
    let err = get_receipts(t.client(), &id).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("127.0.0.1"),
        "names the TCTI: {}",
        err.message()
    );

    t.proxy.as_ref().unwrap().set_up(true);
    let (json, bundle) = final_bundle(t.client(), &id).await;
    let kinds: Vec<ReceiptKind> = bodies(&bundle).iter().map(|b| b.kind).collect();
    assert_eq!(kinds, [ReceiptKind::Start, ReceiptKind::End]);
    let (passed, failed) = t.verify(&json);
    assert!(passed, "{failed:?}");
}

/// Copies the state database's files from `from` into `to` (the daemon stopped).
fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let src = from.join(name);
        let dst: PathBuf = to.join(name);
        if src.exists() {
            std::fs::copy(&src, &dst).unwrap();
        } else {
            let _ = std::fs::remove_file(&dst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_database_shows_in_the_quotes() {
    let Some(mut t) = setup("receipts_rollback", 600, 3600, false).await else {
        return;
    };
    let run = |id: String| async move { (id.clone(), jobs::spec(&id, "true")) };
    let (first, spec) = run(jobs::unique("rcpt-a")).await;
    jobs::start(t.client(), spec).await;
    final_bundle(t.client(), &first).await;

    let state = t.harness.config.state.dir.clone();
    let saved = t.swtpm.scratch("saved-db");
    t.harness.stop_daemon().await;
    copy_db(&state, &saved);
    t.harness.start_daemon().await;
    let (second, spec) = run(jobs::unique("rcpt-b")).await;
    jobs::start(t.client(), spec).await;
    let (_, before) = final_bundle(t.client(), &second).await;

    // The database goes back to the copy; the agent issues and quotes again from there.
    t.harness.stop_daemon().await;
    copy_db(&saved, &state);
    t.harness.start_daemon().await;
    let (third, spec) = run(jobs::unique("rcpt-c")).await;
    jobs::start(t.client(), spec).await;
    let (json, mut after) = final_bundle(t.client(), &third).await;
    let (passed, failed) = t.verify(&json);
    assert!(passed, "each bundle alone verifies: {failed:?}");

    // Two histories of one host side by side: the quote chain contradicts itself.
    after.quotes.extend(before.quotes);
    after.quotes.sort_by_key(|q| q.seq);
    let (passed, failed) = t.verify(&after.to_json());
    assert!(!passed);
    assert!(
        failed.iter().any(|f| f.starts_with("rollback")),
        "{failed:?}"
    );
}

/// The published receipt conformance vectors (`tpm/conformance/receipts`): `fog-agent verify
/// receipts` gives every case the verdict its manifest prescribes, through the runner a
/// third-party verifier uses.
#[test]
fn verify_receipts_agrees_with_every_conformance_vector() {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tpm/conformance");
    let out = std::process::Command::new("python3")
        .arg(vectors.join("run.py"))
        .args(["--suite", "receipts", "--"])
        .arg(env!("CARGO_BIN_EXE_fog-agent"))
        .args(["verify", "receipts"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run python3 for the conformance runner: {err}"));
    let report = ok(&out);
    assert!(!report.contains("FAIL"), "{report}");
}
