//! fog-tpm integration tests against real swtpm instances started by the tests themselves
//! (private local CAs, free ports, torn down on drop): enrollment, attestation, the verifier's
//! rejections (each with its own reason), and interop with `tpm2_checkquote`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use fog_tpm::ak::{AkAlg, AkBlob, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::enroll::{self, EnrollChallenge, EnrollError};
use fog_tpm::report::{parse_pcr_spec, Payload, Report, PAYLOAD_FORMAT};
use fog_tpm::store::{verify_and_record, Store};
use fog_tpm::testing::Swtpm;
use fog_tpm::verify::{verify_report, History, Verdict, VerifyOptions};

mod identity_key;
mod receipts;

/// One swtpm with an enrolled AK, and the auditor's state.
struct Fixture {
    swtpm: Swtpm,
    tpm: Tpm,
    ak: AkBlob,
    auditor: tempfile::TempDir,
    anchors: Vec<u8>,
}

fn options(anchors: &[u8], nonce: &[u8]) -> VerifyOptions {
    VerifyOptions {
        nonce: nonce.to_vec(),
        pcrs: parse_pcr_spec("sha256:0-7").unwrap(),
        trust_anchors: fog_tpm::certs::parse_pem_bundle(anchors).unwrap(),
        allow_software_tpm: true,
        now: SystemTime::now(),
        max_age: Some(Duration::from_secs(3600)),
    }
}

fn enroll(tpm: &Tpm, ak: &AkBlob, store: &Store, anchors: &[u8]) -> Result<(), EnrollError> {
    let req = tpm.enroll_request(ak).unwrap();
    let challenge = enroll::create_challenge(store, &req, &options(anchors, &[0; 8]))?;
    let secret = tpm
        .activate_credential(ak, &challenge.credential_blob, &challenge.encrypted_secret)
        .unwrap();
    enroll::finish(
        store,
        &enroll::make_proof(&challenge, &secret),
        SystemTime::now(),
    )
    .map(|_| ())
}

impl Fixture {
    fn new(alg: AkAlg) -> Self {
        let swtpm = Swtpm::start().unwrap();
        let tpm = Tpm::open(&swtpm.tcti()).unwrap();
        let ak = tpm.create_ak(alg, EkAlg::Rsa, "host-a").unwrap();
        let auditor = tempfile::tempdir().unwrap();
        let anchors = swtpm.trust_anchors_pem().unwrap();
        enroll(&tpm, &ak, &Store::open(auditor.path()).unwrap(), &anchors).unwrap();
        Self {
            swtpm,
            tpm,
            ak,
            auditor,
            anchors,
        }
    }

    fn store(&self) -> Store {
        Store::open(self.auditor.path()).unwrap()
    }

    fn report(&self, nonce: &[u8]) -> Report {
        self.report_with(&self.ak, nonce, "sha256:0-7")
    }

    fn report_with(&self, ak: &AkBlob, nonce: &[u8], pcrs: &str) -> Report {
        let payload = Payload {
            format: PAYLOAD_FORMAT.into(),
            host_id: ak.host_id.clone(),
            nonce: nonce.to_vec(),
            agent_version: "test".into(),
            collected_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            inventory: serde_json::json!({"cpu": {"model": "test"}}),
            benchmarks: None,
        };
        self.tpm
            .attest(
                ak,
                nonce,
                payload.to_bytes().unwrap(),
                &parse_pcr_spec(pcrs).unwrap(),
            )
            .unwrap()
    }

    /// Verifies with an enrolled history but no nonce/clock state (pure verifier).
    fn verify_pure(&self, report: &Report, nonce: &[u8]) -> Verdict {
        let history = History {
            enrolled_ek_pub: Some(report.tpm.ek_pub.clone()),
            enrolled_host_id: Some(report.host_id.clone()),
            ..History::default()
        };
        verify_report(report, &options(&self.anchors, nonce), &history)
    }
}

/// Asserts that exactly `ids` failed, and returns the first one's reason.
fn assert_failed(v: &Verdict, ids: &[&str]) -> String {
    assert_eq!(v.failed(), ids, "verdict: {:#?}", v.checks);
    assert!(!v.ok);
    v.check(ids[0]).unwrap().reason.clone().unwrap()
}

fn nonce(n: u8) -> Vec<u8> {
    vec![n; 32]
}

#[test]
fn rsa_ak_enroll_attest_verify_and_each_tampering_rejected_with_its_own_reason() {
    let f = Fixture::new(AkAlg::Rsa);
    let store = f.store();
    let report = f.report(&nonce(1));

    // Positive: every check passes, the software TPM is flagged, the nonce is burned.
    let v = verify_and_record(&store, &report, &options(&f.anchors, &nonce(1))).unwrap();
    assert!(v.ok, "{:#?}", v.checks);
    assert!(v.software_tpm);
    assert_eq!(v.checks.len(), fog_tpm::verify::CHECKS.len());

    // Replayed nonce.
    let v = verify_and_record(&store, &report, &options(&f.anchors, &nonce(1))).unwrap();
    assert!(assert_failed(&v, &["nonce_unused"]).contains("replay"));

    // Wrong nonce.
    let v = f.verify_pure(&report, &nonce(2));
    assert!(assert_failed(&v, &["nonce_expected"]).contains("not the expected"));

    // A payload byte changed (inside a JSON string, so the payload still parses).
    let mut r = report.clone();
    let needle = b"\"model\":\"test\"";
    let at = r
        .payload
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    r.payload[at + 9] = b'b';
    let v = f.verify_pure(&r, &nonce(1));
    assert!(assert_failed(&v, &["extra_data"]).contains("extraData"));

    // A PCR value changed.
    let mut r = report.clone();
    let v0 = r
        .tpm
        .quote
        .pcrs
        .get_mut("sha256")
        .unwrap()
        .get_mut(&0)
        .unwrap();
    *v0 = "11".repeat(32);
    let v = f.verify_pure(&r, &nonce(1));
    assert!(assert_failed(&v, &["pcr_digest"]).contains("pcrDigest"));

    // A different selection than expected.
    let mut opts = options(&f.anchors, &nonce(1));
    opts.pcrs = parse_pcr_spec("sha256:0-3").unwrap();
    let history = History {
        enrolled_ek_pub: Some(report.tpm.ek_pub.clone()),
        enrolled_host_id: Some(report.host_id.clone()),
        ..History::default()
    };
    let v = verify_report(&report, &opts, &history);
    assert!(
        assert_failed(&v, &["pcr_selection"]).contains("differs from the expected sha256:0,1,2,3")
    );

    // The caching verifier agrees with the plain one, on first use and from its cache.
    let verifier = fog_tpm::verify::Verifier::new(options(&f.anchors, &nonce(1)));
    let history_ok = History {
        enrolled_ek_pub: Some(report.tpm.ek_pub.clone()),
        enrolled_host_id: Some(report.host_id.clone()),
        ..History::default()
    };
    assert!(verifier.verify(&report, &history_ok).ok);
    assert!(verifier.verify(&report, &history_ok).ok);
    let mut r = report.clone();
    r.tpm.quote.signature[10] ^= 1;
    assert_eq!(verifier.verify(&r, &history_ok).failed(), ["signature"]);

    // Signature bytes changed.
    let mut r = report.clone();
    let last = r.tpm.quote.signature.len() - 1;
    r.tpm.quote.signature[last] ^= 1;
    let v = f.verify_pure(&r, &nonce(1));
    assert!(assert_failed(&v, &["signature"]).contains("does not verify"));

    // EK certificate from an untrusted CA (another swtpm's private CA).
    let other = Swtpm::start().unwrap();
    let mut opts = options(&other.trust_anchors_pem().unwrap(), &nonce(1));
    opts.now = SystemTime::now();
    let v = verify_report(&report, &opts, &history);
    assert!(assert_failed(&v, &["ek_certificate"]).contains("does not chain to a trust anchor"));

    // Software TPM CA without --allow-software-tpm.
    let mut opts = options(&f.anchors, &nonce(1));
    opts.allow_software_tpm = false;
    let v = verify_report(&report, &opts, &history);
    assert!(assert_failed(&v, &["ek_certificate"]).contains("--allow-software-tpm"));

    // Not enrolled.
    let v = verify_report(
        &report,
        &options(&f.anchors, &nonce(1)),
        &History::default(),
    );
    assert_failed(&v, &["ak_enrolled", "host_id_enrolled"]);

    // The enrolled AK speaking for another host (wrapper and payload both say host-z, signed).
    let mut other_host = f.ak.clone();
    other_host.host_id = "host-z".into();
    let r = f.report_with(&other_host, &nonce(4), "sha256:0-7");
    let v = verify_and_record(&store, &r, &options(&f.anchors, &nonce(4))).unwrap();
    assert!(assert_failed(&v, &["host_id_enrolled"])
        .contains("is not the host \"host-a\" the AK was enrolled for"));

    // A quote signed by a second swtpm's AK, carried in this TPM's report.
    let tpm_b = Tpm::open(&other.tcti()).unwrap();
    let ak_b = tpm_b.create_ak(AkAlg::Rsa, EkAlg::Rsa, "host-a").unwrap();
    let qd = fog_tpm::report::qualifying_data(&nonce(1), &report.payload);
    let quote_b = tpm_b
        .quote(&ak_b, &qd, &parse_pcr_spec("sha256:0-7").unwrap())
        .unwrap();
    let mut r = report.clone();
    r.tpm.quote.attest = quote_b.attest;
    r.tpm.quote.signature = quote_b.signature;
    r.tpm.quote.pcrs = quote_b.pcrs;
    let v = f.verify_pure(&r, &nonce(1));
    let failed = v.failed();
    assert!(
        failed.contains(&"signature") && failed.contains(&"qualified_signer"),
        "{failed:?}"
    );
    assert!(!v.ok);

    // EK of swtpm A with the AK of swtpm B: the challenge is made for A's EK and B's AK name;
    // neither TPM can activate it.
    let mut req = f.tpm.enroll_request(&f.ak).unwrap();
    req.ak_pub = ak_b.public.clone();
    let challenge: EnrollChallenge =
        enroll::create_challenge(&store, &req, &options(&f.anchors, &[0; 8])).unwrap();
    let on_b = tpm_b.activate_credential(
        &ak_b,
        &challenge.credential_blob,
        &challenge.encrypted_secret,
    );
    assert!(on_b.is_err(), "TPM B activated a credential for TPM A's EK");
    let on_a = f.tpm.activate_credential(
        &f.ak,
        &challenge.credential_blob,
        &challenge.encrypted_secret,
    );
    assert!(
        on_a.is_err(),
        "TPM A activated a credential bound to TPM B's AK name"
    );
    // And a guessed proof is refused (and burns the challenge).
    let guessed = enroll::make_proof(&challenge, &[0; 32]);
    assert!(matches!(
        enroll::finish(&store, &guessed, SystemTime::now()),
        Err(EnrollError::ProofMismatch)
    ));
}

#[test]
fn unrestricted_ak_is_refused_at_enrollment_and_verification() {
    let swtpm = Swtpm::start().unwrap();
    let tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let anchors = swtpm.trust_anchors_pem().unwrap();
    let ak = tpm
        .create_unrestricted_ak(AkAlg::Ecc, EkAlg::Rsa, "h")
        .unwrap();
    let auditor = tempfile::tempdir().unwrap();
    let store = Store::open(auditor.path()).unwrap();
    let req = tpm.enroll_request(&ak).unwrap();
    let err = enroll::create_challenge(&store, &req, &options(&anchors, &[0; 8])).unwrap_err();
    assert!(
        matches!(&err, EnrollError::AkAttributes(why) if why.contains("lacks restricted")),
        "{err}"
    );

    // The verifier rejects its quotes too, whatever the history says.
    let payload = b"{}".to_vec();
    let report = tpm
        .attest(
            &ak,
            &nonce(3),
            payload,
            &parse_pcr_spec("sha256:0-7").unwrap(),
        )
        .unwrap();
    let history = History {
        enrolled_ek_pub: Some(report.tpm.ek_pub.clone()),
        enrolled_host_id: Some(report.host_id.clone()),
        ..History::default()
    };
    let v = verify_report(&report, &options(&anchors, &nonce(3)), &history);
    assert!(v.failed().contains(&"ak_attributes"), "{:?}", v.failed());
}

#[test]
fn ecc_ak_round_trip_reset_count_regression_and_tpm2_checkquote_interop() {
    let mut f = Fixture::new(AkAlg::Ecc);
    let store = f.store();
    // A report made before a TPM reset...
    let old = f.report(&nonce(5));
    f.swtpm.restart().unwrap();
    f.tpm = Tpm::open(&f.swtpm.tcti()).unwrap();
    // ...then a newer one, accepted (records the higher resetCount).
    let new = f.report(&nonce(6));
    let v = verify_and_record(&store, &new, &options(&f.anchors, &nonce(6))).unwrap();
    assert!(v.ok, "{:#?}", v.checks);
    // The old report (fresh nonce, valid signature) now goes backwards in resetCount.
    let v = verify_and_record(&store, &old, &options(&f.anchors, &nonce(5))).unwrap();
    assert!(assert_failed(&v, &["clock_monotonic"]).contains("resetCount"));

    // Interop: tpm2_checkquote accepts the exported files (RSA and ECC AKs).
    for report in [
        &new,
        &f.report_with(
            &f.tpm.create_ak(AkAlg::Rsa, EkAlg::Rsa, "host-a").unwrap(),
            &nonce(7),
            "sha256:0-7",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let q = fog_tpm::export::export_tpm2_tools(report, dir.path()).unwrap();
        let out = std::process::Command::new("tpm2_checkquote")
            .current_dir(dir.path())
            .args([
                "-u",
                "ak.pub.pem",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-f",
                "pcrs.bin",
                "-g",
                "sha256",
                "-q",
                &q,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tpm2_checkquote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("pcrs.bin"))
                .unwrap()
                .len(),
            668
        );
    }
}

#[test]
fn software_make_credential_activates_on_swtpm_with_an_ecc_ek() {
    let swtpm = Swtpm::start().unwrap();
    let tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let ak = tpm.create_ak(AkAlg::Ecc, EkAlg::Ecc, "h").unwrap();
    let ek =
        fog_tpm::structures::Public::parse_tpm2b(&tpm.ek_info(EkAlg::Ecc).unwrap().public).unwrap();
    let name = fog_tpm::structures::Public::parse_tpm2b(&ak.public)
        .unwrap()
        .name()
        .unwrap();
    let made = fog_tpm::credential::make_credential(&ek, &name, &[0x5a; 32]).unwrap();
    let secret = tpm
        .activate_credential(&ak, &made.credential_blob, &made.encrypted_secret)
        .unwrap();
    assert_eq!(secret, vec![0x5a; 32]);
}
