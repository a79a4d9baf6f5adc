//! `fog-agent attest` / `fog-agent verify` end to end through the built binary, against a real
//! swtpm started by the test (fog_tpm::testing): enrollment, a report over the live inventory,
//! verification, replay rejection, tpm2-tools export, and the one-line error without a TPM.

use std::path::Path;
use std::process::{Command, Output};

use fog_tpm::testing::Swtpm;

#[allow(clippy::unwrap_used)] // a test helper: failing to run the binary fails the test
pub(crate) fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fog-agent"))
        .args(args)
        .env_remove("FOG_LOG")
        .output()
        .unwrap()
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[allow(clippy::unwrap_used)] // test paths are UTF-8 temp paths
pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Enrolls the AK of `swtpm` (created in `agent_dir` for `host_id`) with the auditor state in
/// `auditor_dir`, through the CLI: enroll-request, enroll-challenge, activate, enroll-finish.
pub(crate) fn enroll_through_the_cli(
    swtpm: &Swtpm,
    agent_dir: &Path,
    auditor_dir: &Path,
    host_id: &str,
) {
    let tcti = swtpm.tcti().to_string();
    let anchors = swtpm.trust_anchors_file().unwrap();
    let req = swtpm.scratch("req.json");
    let chal = swtpm.scratch("chal.json");
    let proof = swtpm.scratch("proof.json");
    ok(&agent(&[
        "attest",
        "enroll-request",
        "--tcti",
        &tcti,
        "--state-dir",
        s(agent_dir),
        "--host-id",
        host_id,
        "--out",
        s(&req),
    ]));
    ok(&agent(&[
        "verify",
        "enroll-challenge",
        s(&req),
        "--trust-anchors",
        s(&anchors),
        "--allow-software-tpm",
        "--out",
        s(&chal),
        "--state-dir",
        s(auditor_dir),
    ]));
    ok(&agent(&[
        "attest",
        "activate",
        s(&chal),
        "--tcti",
        &tcti,
        "--state-dir",
        s(agent_dir),
        "--out",
        s(&proof),
    ]));
    let finished = ok(&agent(&[
        "verify",
        "enroll-finish",
        s(&proof),
        "--state-dir",
        s(auditor_dir),
    ]));
    assert!(
        finished.contains(&format!("enrolled: host {host_id} (software TPM)")),
        "{finished}"
    );
}

#[test]
fn enroll_attest_verify_through_the_cli() {
    let swtpm = Swtpm::start().unwrap();
    let tcti = swtpm.tcti().to_string();
    let agent_dir = swtpm.scratch("agent");
    let auditor_dir = swtpm.scratch("auditor");
    let anchors = swtpm.trust_anchors_file().unwrap();
    let report = swtpm.scratch("report.json");
    let export = swtpm.scratch("export");

    enroll_through_the_cli(&swtpm, &agent_dir, &auditor_dir, "it-host");

    let nonce = "00112233445566778899aabbccddeeff";
    ok(&agent(&[
        "attest",
        "--nonce",
        nonce,
        "--tcti",
        &tcti,
        "--state-dir",
        s(&agent_dir),
        "--out",
        s(&report),
        "--export-tpm2-tools",
        s(&export),
    ]));
    let payload = {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        use base64::Engine as _;
        let p = base64::engine::general_purpose::STANDARD
            .decode(r["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&p).unwrap()
    };
    assert_eq!(payload["inventory"]["format"], "fog-inventory-v1");
    // The cached benchmark results (none measured in this fresh state dir).
    assert_eq!(payload["benchmarks"]["format"], "fog-bench-v1");
    assert!(payload["benchmarks"]["fingerprint"].is_string());
    assert_eq!(payload["benchmarks"]["results"], serde_json::json!([]));

    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            s(&report),
            "--nonce",
            nonce,
            "--trust-anchors",
            s(&anchors),
            "--state-dir",
            s(&auditor_dir),
            "--json",
        ];
        args.extend_from_slice(extra);
        agent(&args)
    };
    // Without --allow-software-tpm the swtpm's CA is refused.
    let refused = verify(&[]);
    assert_eq!(refused.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(v["ok"], false);
    // With it, every check passes; the nonce is then burned.
    let v: serde_json::Value =
        serde_json::from_str(&ok(&verify(&["--allow-software-tpm"]))).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["software_tpm"], true);
    let replay = verify(&["--allow-software-tpm"]);
    assert_eq!(replay.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&replay.stdout).unwrap();
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["nonce_unused"]);

    for f in ["quote.msg", "quote.sig", "ak.pub.pem", "pcrs.bin"] {
        assert!(export.join(f).is_file(), "{f} missing");
    }
}

#[test]
fn without_a_tpm_attest_fails_with_one_line_naming_the_tcti() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "attest",
        "enroll-request",
        "--tcti",
        "device:/dev/fog-no-such-tpm",
        "--state-dir",
        s(dir.path()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("device:/dev/fog-no-such-tpm") && err.contains("--tcti"),
        "{err}"
    );
}

/// The published conformance vectors (`tpm/conformance`): `fog-agent verify` gives every case
/// the verdict its manifest prescribes, through the same runner a third-party verifier uses.
#[test]
fn verify_agrees_with_every_conformance_vector() {
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tpm/conformance");
    let out = Command::new("python3")
        .arg(vectors.join("run.py"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_fog-agent"))
        .arg("verify")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(err) => panic!("cannot run python3 for the conformance runner: {err}"),
    };
    let report = ok(&out);
    assert!(
        report.trim_end().ends_with("cases agree") && !report.contains("FAIL"),
        "{report}"
    );
}
