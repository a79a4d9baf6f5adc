//! The TPM-resident identity key end to end through the built binary, on swtpm: the agent's
//! identity request, the CA's checks and the issued certificate, the rejections (wrong nonce,
//! a CSR for another key, a host id the AK was not enrolled for), and a state directory copied
//! to another TPM, which cannot sign.

use std::path::Path;

use fog_agent::api::tls::DevCerts;
use fog_tpm::testing::Swtpm;

use crate::attest::{agent, enroll_through_the_cli, ok, s};

const NONCE: &str = "0123456789abcdef0123456789abcdef";

/// The failed check ids of a `--json` verdict.
fn failed(stdout: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn identity_request(swtpm: &Swtpm, state: &Path, nonce: &str, out: &Path) -> std::process::Output {
    agent(&[
        "attest",
        "identity-request",
        "--nonce",
        nonce,
        "--tcti",
        &swtpm.tcti().to_string(),
        "--state-dir",
        s(state),
        "--out",
        s(out),
    ])
}

fn verify_identity(request: &Path, auditor: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "verify",
        "identity",
        s(request),
        "--nonce",
        NONCE,
        "--state-dir",
        s(auditor),
        "--json",
    ];
    args.extend_from_slice(extra);
    agent(&args)
}

/// Rewrites one member of a request file.
fn altered(request: &Path, to: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(request).unwrap()).unwrap();
    change(&mut v);
    std::fs::write(to, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn identity_request_is_checked_and_certified_and_bound_to_its_tpm() {
    let swtpm = Swtpm::start().unwrap();
    let state = swtpm.scratch("agent");
    let auditor = swtpm.scratch("auditor");
    enroll_through_the_cli(&swtpm, &state, &auditor, "id-host");

    let request = swtpm.scratch("identity.json");
    ok(&identity_request(&swtpm, &state, NONCE, &request));
    assert!(state.join("identity-key.json").is_file());

    // The CA: a development CA whose key is on disk.
    let ca = DevCerts::generate_for("id-host").unwrap().ca;
    let (ca_cert, ca_key) = (swtpm.scratch("ca.pem"), swtpm.scratch("ca.key"));
    std::fs::write(&ca_cert, &ca.cert_pem).unwrap();
    std::fs::write(&ca_key, &ca.key_pem).unwrap();
    let cert = swtpm.scratch("agent-tpm.pem");
    let accepted = ok(&verify_identity(
        &request,
        &auditor,
        &[
            "--ca-cert",
            s(&ca_cert),
            "--ca-key",
            s(&ca_key),
            "--out",
            s(&cert),
        ],
    ));
    let verdict: serde_json::Value = serde_json::from_str(&accepted).unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["host_id"], "id-host");

    // The certificate names the host and carries the TPM key the request certified.
    let pem = std::fs::read(&cert).unwrap();
    let der = pem_der(&pem);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = parsed.subject_alternative_name().unwrap().unwrap();
    assert!(
        sans.value.general_names.iter().any(|n| matches!(
            n,
            x509_parser::extensions::GeneralName::URI("fog://agent/id-host")
        )),
        "{:?}",
        sans.value
    );
    let req: serde_json::Value = serde_json::from_slice(&std::fs::read(&request).unwrap()).unwrap();
    let key_pub = b64(req["identity"]["key_pub"].as_str().unwrap());
    let key = fog_tpm::structures::Public::parse_tpm2b(&key_pub).unwrap();
    assert_eq!(
        parsed.public_key().subject_public_key.data.as_ref(),
        fog_tpm::identity::sec1_point(&key).unwrap().as_slice()
    );
    let (_, ca_parsed) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
    let ca_x509 = ca_parsed.parse_x509().unwrap();
    parsed.verify_signature(Some(ca_x509.public_key())).unwrap();

    // Another nonce than the CA's.
    let stale = swtpm.scratch("stale.json");
    ok(&identity_request(
        &swtpm,
        &state,
        "ffffffffffffffffffffffffffffffff",
        &stale,
    ));
    let out = verify_identity(&stale, &auditor, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(failed(&out.stdout), ["nonce_expected"]);

    // A CSR for a software key in place of the TPM's.
    let swapped = swtpm.scratch("swapped.json");
    let soft_csr = {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    altered(&request, &swapped, |v| {
        use base64::Engine as _;
        v["csr"] = base64::engine::general_purpose::STANDARD
            .encode(&soft_csr)
            .into();
    });
    let out = verify_identity(&swapped, &auditor, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(failed(&out.stdout), ["certify_binding", "csr"]);

    // A host id the AK was not enrolled for.
    let other_host = swtpm.scratch("other-host.json");
    altered(&request, &other_host, |v| v["host_id"] = "host-z".into());
    let out = verify_identity(&other_host, &auditor, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(failed(&out.stdout), ["ak_enrolled"]);

    // A malformed request is a verdict too.
    let broken = swtpm.scratch("broken.json");
    std::fs::write(&broken, b"{\"format\": ").unwrap();
    let out = verify_identity(&broken, &auditor, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(failed(&out.stdout), ["request_json"]);

    // The state directory copied next to another TPM: its blobs do not load there.
    let other = Swtpm::start().unwrap();
    let copied = other.scratch("copied");
    copy_dir(&state, &copied);
    let out = identity_request(&other, &copied, NONCE, &other.scratch("copied.json"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TPM"), "{stderr}");
}

fn b64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

/// The DER of the first PEM certificate.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    parsed.contents
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
