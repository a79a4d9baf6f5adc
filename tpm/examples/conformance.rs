//! Writes the `fog-attest-v1` conformance vectors (see `tpm/conformance/README.md`): genuine
//! reports from two software TPMs, altered copies for every check of `REPORT.md` §5 and the
//! cases it rules on, each with the verdict the document prescribes, and the verifier states
//! and trust anchors they are checked against.
//!
//! `cargo run -p fog-tpm --features test-util --example conformance -- tpm/conformance`
//!
//! Every expected verdict is written here by hand, from the document; before anything is
//! written, each case is run through this crate's verifier and the generation stops at the first
//! disagreement.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fog_tpm::ak::{AkAlg, AkBlob, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::enroll;
use fog_tpm::report::{parse_pcr_spec, Payload, Report, PAYLOAD_FORMAT};
use fog_tpm::store::{verify_and_record, ClockRecord, Store, VerifierState};
use fog_tpm::structures::PcrSelection;
use fog_tpm::testing::Swtpm;
use fog_tpm::verify::{malformed_verdict, Verdict, VerifyOptions};
use serde_json::json;
use vectors::VectorDir;

mod vectors;

/// The nonce of the genuine reports (and of the alterations that keep it).
const NONCE: [u8; 32] = [0x5a; 32];

/// One vector: a report (as text, so malformed ones can be written), how to verify it and the
/// verdict the document prescribes.
struct Case {
    id: &'static str,
    description: &'static str,
    report: Vec<u8>,
    state: VerifierState,
    nonce: Vec<u8>,
    pcrs: &'static str,
    anchors: &'static str,
    allow_software_tpm: bool,
    failed: Vec<&'static str>,
}

struct Host {
    tpm: Tpm,
    ak: AkBlob,
}

struct World {
    _swtpm_a: Swtpm,
    _swtpm_b: Swtpm,
    rsa: Host,
    ecc: Host,
    other: Host,
    unrestricted: AkBlob,
    state: VerifierState,
    anchors_a: Vec<u8>,
    anchors_b: Vec<u8>,
    at: SystemTime,
}

fn options(anchors: &[u8], nonce: &[u8], pcrs: &str, at: SystemTime) -> VerifyOptions {
    VerifyOptions {
        nonce: nonce.to_vec(),
        pcrs: parse_pcr_spec(pcrs).unwrap(),
        trust_anchors: fog_tpm::certs::parse_pem_bundle(anchors).unwrap(),
        allow_software_tpm: true,
        now: at,
        max_age: None,
    }
}

fn enroll_into(store: &Store, host: &Host, anchors: &[u8], at: SystemTime) {
    let req = host.tpm.enroll_request(&host.ak).unwrap();
    let challenge =
        enroll::create_challenge(store, &req, &options(anchors, &[0; 8], "sha256:0-7", at))
            .unwrap();
    let secret = host
        .tpm
        .activate_credential(
            &host.ak,
            &challenge.credential_blob,
            &challenge.encrypted_secret,
        )
        .unwrap();
    enroll::finish(store, &enroll::make_proof(&challenge, &secret), at).unwrap();
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The payload P of a genuine report for `host_id`.
fn payload(host_id: &str, nonce: &[u8], at: SystemTime) -> serde_json::Value {
    serde_json::to_value(Payload {
        format: PAYLOAD_FORMAT.into(),
        host_id: host_id.into(),
        nonce: nonce.to_vec(),
        agent_version: "conformance".into(),
        collected_at: unix(at),
        inventory: json!({"cpu": {"model": "conformance vector"}}),
        benchmarks: None,
    })
    .unwrap()
}

/// Extends PCRs 0-7 of `swtpm` as a measured boot would (`tpm2_pcrextend`, tpm2-tools), so the
/// quoted values are not all zeros.
fn measure_boot(swtpm: &Swtpm) {
    for index in 0..8 {
        let digest = fog_tpm::structures::HashAlg::Sha256
            .digest(&[format!("boot component {index}").as_bytes()]);
        let out = std::process::Command::new("tpm2_pcrextend")
            .arg("-T")
            .arg(swtpm.tcti().to_string())
            .arg(format!("{index}:sha256={}", hex::encode(digest)))
            .output()
            .expect("tpm2_pcrextend (tpm2-tools)");
        assert!(
            out.status.success(),
            "tpm2_pcrextend: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl World {
    fn new() -> Self {
        let swtpm_a = Swtpm::start().unwrap();
        let swtpm_b = Swtpm::start().unwrap();
        measure_boot(&swtpm_a);
        measure_boot(&swtpm_b);
        let tpm = |s: &Swtpm| Tpm::open(&s.tcti()).unwrap();
        let rsa = Host {
            ak: tpm(&swtpm_a)
                .create_ak(AkAlg::Rsa, EkAlg::Rsa, "host-a")
                .unwrap(),
            tpm: tpm(&swtpm_a),
        };
        let ecc = Host {
            ak: tpm(&swtpm_a)
                .create_ak(AkAlg::Ecc, EkAlg::Rsa, "host-e")
                .unwrap(),
            tpm: tpm(&swtpm_a),
        };
        let other = Host {
            ak: tpm(&swtpm_b)
                .create_ak(AkAlg::Rsa, EkAlg::Rsa, "host-b")
                .unwrap(),
            tpm: tpm(&swtpm_b),
        };
        let unrestricted = rsa
            .tpm
            .create_unrestricted_ak(AkAlg::Ecc, EkAlg::Rsa, "host-u")
            .unwrap();
        let anchors_a = swtpm_a.trust_anchors_pem().unwrap();
        let anchors_b = swtpm_b.trust_anchors_pem().unwrap();
        let at = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        enroll_into(&store, &rsa, &anchors_a, at);
        enroll_into(&store, &ecc, &anchors_a, at);
        let mut state = store.load().unwrap();
        // The unrestricted AK cannot be enrolled (enrollment checks its attributes too); the
        // state says it was, so that only `ak_attributes` speaks.
        let ak_pub = fog_tpm::structures::Public::parse_tpm2b(&unrestricted.public).unwrap();
        let rsa_enrolled = state.enrolled.values().next().unwrap().clone();
        state.enrolled.insert(
            hex::encode(ak_pub.name().unwrap()),
            fog_tpm::store::EnrolledAk {
                host_id: "host-u".into(),
                ak_pub: hex::encode(&unrestricted.public),
                ..rsa_enrolled
            },
        );
        Self {
            _swtpm_a: swtpm_a,
            _swtpm_b: swtpm_b,
            rsa,
            ecc,
            other,
            unrestricted,
            state,
            anchors_a,
            anchors_b,
            at,
        }
    }

    /// A genuine report of `ak` (on `tpm`) over the payload bytes `p`.
    fn report_over(&self, tpm: &Tpm, ak: &AkBlob, p: Vec<u8>, pcrs: &PcrSelection) -> Report {
        tpm.attest(ak, &NONCE, p, pcrs).unwrap()
    }

    fn genuine(&self, host: &Host) -> Report {
        let p = serde_json::to_vec(&payload(&host.ak.host_id, &NONCE, self.at)).unwrap();
        self.report_over(
            &host.tpm,
            &host.ak,
            p,
            &parse_pcr_spec("sha256:0-7").unwrap(),
        )
    }

    /// A case verified like the genuine reports (anchors of TPM A, software TPM allowed).
    fn case(
        &self,
        id: &'static str,
        description: &'static str,
        report: &Report,
        failed: &[&'static str],
    ) -> Case {
        Case {
            id,
            description,
            report: report.to_json().unwrap(),
            state: self.state.clone(),
            nonce: NONCE.to_vec(),
            pcrs: "sha256:0-7",
            anchors: "swtpm-a.pem",
            allow_software_tpm: true,
            failed: failed.to_vec(),
        }
    }

    fn anchors(&self, name: &str) -> &[u8] {
        match name {
            "swtpm-a.pem" => &self.anchors_a,
            _ => &self.anchors_b,
        }
    }
}

/// The report with its PCR values edited by `edit`.
fn with_pcrs(report: &Report, edit: impl FnOnce(&mut fog_tpm::report::PcrValues)) -> Report {
    let mut r = report.clone();
    edit(&mut r.tpm.quote.pcrs);
    r
}

/// The report's JSON text with `from` replaced by `to` (once; it must be there).
fn text_edit(report: &Report, from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(report.to_json().unwrap()).unwrap();
    assert!(text.contains(from), "{from} not in the report");
    text.replacen(from, to, 1).into_bytes()
}

#[allow(clippy::too_many_lines)]
fn cases(w: &World) -> Vec<Case> {
    let rsa = w.genuine(&w.rsa);
    let ecc = w.genuine(&w.ecc);
    let all_after_attest = [
        "attest_structure",
        "signature",
        "qualified_signer",
        "extra_data",
        "pcr_selection",
        "pcr_digest",
        "clock_safe",
        "clock_monotonic",
    ];
    let mut cases = vec![
        w.case(
            "valid-rsa",
            "genuine report, RSA AK under an RSA EK",
            &rsa,
            &[],
        ),
        w.case(
            "valid-ecc",
            "genuine report, ECC P-256 AK under an RSA EK",
            &ecc,
            &[],
        ),
    ];

    let mut r = rsa.clone();
    r.format = "fog-attest-v2".into();
    cases.push(w.case(
        "format-changed",
        "wrapper format is not fog-attest-v1",
        &r,
        &["format"],
    ));

    let mut c = w.case(
        "ek-untrusted-anchor",
        "the EK certificate does not chain to the configured anchors",
        &rsa,
        &["ek_certificate"],
    );
    c.anchors = "swtpm-b.pem";
    cases.push(c);
    let mut c = w.case(
        "ek-software-not-allowed",
        "a software TPM's EK without --allow-software-tpm",
        &rsa,
        &["ek_certificate"],
    );
    c.allow_software_tpm = false;
    cases.push(c);

    let mut r = rsa.clone();
    r.tpm.ek_pub = w.other.tpm.ek_info(EkAlg::Rsa).unwrap().public;
    cases.push(w.case(
        "ek-pub-swapped",
        "another TPM's EK public in place of the certified one",
        &r,
        &["ek_matches_certificate", "ak_enrolled", "qualified_signer"],
    ));

    let p = serde_json::to_vec(&payload("host-u", &NONCE, w.at)).unwrap();
    let r = w.report_over(
        &w.rsa.tpm,
        &w.unrestricted,
        p,
        &parse_pcr_spec("sha256:0-7").unwrap(),
    );
    cases.push(w.case(
        "ak-unrestricted",
        "a quote by an AK without the restricted attribute (state says enrolled)",
        &r,
        &["ak_attributes"],
    ));

    let mut c = w.case(
        "ak-not-enrolled",
        "the verifier state knows no AK",
        &rsa,
        &["ak_enrolled", "host_id_enrolled"],
    );
    c.state = VerifierState::default();
    cases.push(c);

    let mut c = w.case(
        "nonce-unexpected",
        "the auditor issued another nonce",
        &rsa,
        &["nonce_expected"],
    );
    c.nonce = vec![0xa5; 32];
    cases.push(c);
    let mut c = w.case(
        "nonce-replayed",
        "the nonce was burned by an earlier accepted report",
        &rsa,
        &["nonce_unused"],
    );
    c.state.nonces.insert(
        hex::encode(fog_tpm::structures::HashAlg::Sha256.digest(&[&NONCE])),
        unix(w.at),
    );
    cases.push(c);

    let mut r = rsa.clone();
    r.tpm.quote.attest.push(0);
    cases.push(w.case(
        "attest-trailing-byte",
        "a byte after pcrDigest in TPMS_ATTEST",
        &r,
        &all_after_attest,
    ));

    let mut r = rsa.clone();
    // TPMT_SIGNATURE: sigAlg (u16), hash (u16), ...: SHA-256 (0x000B) -> SHA-384 (0x000C).
    assert_eq!(&r.tpm.quote.signature[2..4], &[0x00, 0x0b]);
    r.tpm.quote.signature[3] = 0x0c;
    cases.push(w.case(
        "signature-hash-field",
        "the signature names SHA-384; the AK's scheme is SHA-256 (check 14 hashes with the named hash)",
        &r,
        &["signature_scheme", "pcr_digest"],
    ));

    let mut r = rsa.clone();
    let last = r.tpm.quote.signature.len() - 1;
    r.tpm.quote.signature[last] ^= 1;
    cases.push(w.case(
        "signature-flipped",
        "one signature bit flipped",
        &r,
        &["signature"],
    ));

    let qd = fog_tpm::report::qualifying_data(&NONCE, &rsa.payload);
    let quote = w
        .other
        .tpm
        .quote(&w.other.ak, &qd, &parse_pcr_spec("sha256:0-7").unwrap())
        .unwrap();
    let mut r = rsa.clone();
    r.tpm.quote.attest = quote.attest;
    r.tpm.quote.signature = quote.signature;
    r.tpm.quote.pcrs = quote.pcrs;
    cases.push(w.case(
        "quote-from-other-tpm",
        "a quote over the same qualifying data by another TPM's AK",
        &r,
        &["signature", "qualified_signer"],
    ));

    let mut r = rsa.clone();
    let needle = b"conformance vector";
    let at = r
        .payload
        .windows(needle.len())
        .position(|s| s == needle)
        .unwrap();
    r.payload[at] = b'C';
    cases.push(w.case(
        "payload-byte-changed",
        "one byte of P changed (P still parses)",
        &r,
        &["extra_data"],
    ));

    let mut c = w.case(
        "pcrs-other-selection-expected",
        "the auditor expects sha256:0-3",
        &rsa,
        &["pcr_selection"],
    );
    c.pcrs = "sha256:0-3";
    cases.push(c);

    let mut twice = parse_pcr_spec("sha256:0-3").unwrap();
    twice
        .banks
        .push(parse_pcr_spec("sha256:4-7").unwrap().banks[0].clone());
    let p = serde_json::to_vec(&payload("host-a", &NONCE, w.at)).unwrap();
    match w.rsa.tpm.attest(&w.rsa.ak, &NONCE, p, &twice) {
        Ok(r) => cases.push(w.case(
            "pcr-selection-bank-twice",
            "a genuine quote whose signed selection names sha256 in two entries (0-3, 4-7)",
            &r,
            &["pcr_selection"],
        )),
        Err(err) => eprintln!("no vector pcr-selection-bank-twice: this TPM refuses it ({err})"),
    }

    cases.push(w.case(
        "pcr-value-changed",
        "PCR 0's reported value changed",
        &with_pcrs(&rsa, |p| {
            p.get_mut("sha256").unwrap().insert(0, "11".repeat(32));
        }),
        &["pcr_digest"],
    ));
    cases.push(w.case(
        "pcr-value-uppercase",
        "PCR values in upper-case hex (the same bytes)",
        &with_pcrs(&rsa, |p| {
            for v in p.get_mut("sha256").unwrap().values_mut() {
                *v = v.to_uppercase();
            }
        }),
        &["pcr_digest"],
    ));
    cases.push(w.case(
        "pcr-value-outside-selection",
        "a value for PCR 8, which the quote does not cover",
        &with_pcrs(&rsa, |p| {
            p.get_mut("sha256").unwrap().insert(8, "00".repeat(32));
        }),
        &["pcr_digest"],
    ));

    let mut c = w.case(
        "clock-went-back",
        "the verifier accepted a later resetCount from this AK before",
        &rsa,
        &["clock_monotonic"],
    );
    let ak_name = hex::encode(
        fog_tpm::structures::Public::parse_tpm2b(&rsa.tpm.ak_pub)
            .unwrap()
            .name()
            .unwrap(),
    );
    let clock = fog_tpm::structures::Attest::parse(&rsa.tpm.quote.attest)
        .unwrap()
        .clock_info;
    c.state.clocks.insert(
        ak_name,
        ClockRecord {
            reset_count: clock.reset_count + 1,
            ..ClockRecord::from(clock)
        },
    );
    cases.push(c);

    // Payloads the TPM signed, each breaking §2 one way.
    let signed = |p: Vec<u8>| {
        w.report_over(
            &w.rsa.tpm,
            &w.rsa.ak,
            p,
            &parse_pcr_spec("sha256:0-7").unwrap(),
        )
    };
    let good = payload("host-a", &NONCE, w.at);
    let with = |edit: &dyn Fn(&mut serde_json::Map<String, serde_json::Value>)| {
        let mut p = good.clone();
        edit(p.as_object_mut().unwrap());
        serde_json::to_vec(&p).unwrap()
    };
    let payload_cases: Vec<(&'static str, &'static str, Vec<u8>)> = vec![
        (
            "payload-host-differs",
            "P names host-z, the wrapper host-a",
            with(&|p| {
                p.insert("host_id".into(), json!("host-z"));
            }),
        ),
        (
            "payload-not-utf8",
            "P holds a byte that is not UTF-8 in a member verifiers do not read",
            {
                let mut p = with(&|p| {
                    p.insert("note".into(), json!("XX"));
                });
                let at = p.windows(4).position(|s| s == b"\"XX\"").unwrap();
                p[at + 1] = 0xff;
                p
            },
        ),
        (
            "payload-duplicate-member",
            "P names host_id twice (the same value)",
            {
                let text = String::from_utf8(with(&|_| {})).unwrap();
                text.replacen('{', "{\"host_id\":\"host-a\",", 1)
                    .into_bytes()
            },
        ),
        (
            "payload-missing-inventory",
            "P has no inventory member",
            with(&|p| {
                p.remove("inventory");
            }),
        ),
        (
            "payload-from-the-future",
            "P was collected an hour after the verification time",
            with(&|p| {
                p.insert("collected_at".into(), json!(unix(w.at) + 3600));
            }),
        ),
    ];
    for (id, description, p) in payload_cases {
        cases.push(w.case(id, description, &signed(p), &["payload_matches_wrapper"]));
    }

    let mut other_host = w.rsa.ak.clone();
    other_host.host_id = "host-z".into();
    let p = serde_json::to_vec(&payload("host-z", &NONCE, w.at)).unwrap();
    let r = w.report_over(
        &w.rsa.tpm,
        &other_host,
        p,
        &parse_pcr_spec("sha256:0-7").unwrap(),
    );
    cases.push(w.case(
        "host-not-enrolled-for",
        "the AK enrolled for host-a signs a report (wrapper and P) claiming host-z",
        &r,
        &["host_id_enrolled"],
    ));

    let pcr0 = rsa.tpm.quote.pcrs["sha256"][&0].clone();
    let malformed: Vec<(&'static str, &'static str, Vec<u8>)> = vec![
        (
            "malformed-not-json",
            "the report is not JSON",
            b"fog-attest-v1".to_vec(),
        ),
        (
            "malformed-pcr-twice",
            "PCR 0 given twice in one bank object",
            text_edit(
                &rsa,
                &format!("\"0\": \"{pcr0}\""),
                &format!("\"0\": \"{pcr0}\", \"0\": \"{pcr0}\""),
            ),
        ),
        (
            "malformed-pcr-index-leading-zero",
            "PCR index key \"00\"",
            text_edit(&rsa, "\"0\": ", "\"00\": "),
        ),
        (
            "malformed-unknown-member",
            "an unknown member in the wrapper",
            text_edit(&rsa, "\"format\":", "\"extra\": 1, \"format\":"),
        ),
        (
            "malformed-bad-base64",
            "the nonce is not base64",
            text_edit(
                &rsa,
                &format!("\"nonce\": \"{}\"", base64_encode(&NONCE)),
                "\"nonce\": \"not base64!\"",
            ),
        ),
        (
            "malformed-not-utf8",
            "a byte that is not UTF-8 in host_id",
            {
                let mut t = text_edit(&rsa, "\"host-a\"", "\"host-X\"");
                let at = t.windows(8).position(|s| s == b"\"host-X\"").unwrap();
                t[at + 6] = 0xff;
                t
            },
        ),
    ];
    for (id, description, text) in malformed {
        let mut c = w.case(id, description, &rsa, &["report_json"]);
        c.report = text;
        cases.push(c);
    }
    cases
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// When the vectors are verified: a minute after the reports were made.
fn verify_at(w: &World) -> SystemTime {
    w.at + Duration::from_secs(60)
}

/// This crate's verdict on a case, as `fog-agent verify` computes it.
fn verdict(w: &World, case: &Case) -> Verdict {
    let Ok(report) = Report::from_json(&case.report) else {
        return malformed_verdict(String::new());
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.save(&case.state).unwrap();
    let mut opts = options(
        w.anchors(case.anchors),
        &case.nonce,
        case.pcrs,
        verify_at(w),
    );
    opts.allow_software_tpm = case.allow_software_tpm;
    verify_and_record(&store, &report, &opts).unwrap()
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: conformance OUTPUT_DIR (tpm/conformance)"),
    );
    let w = World::new();
    let cases = cases(&w);
    for case in &cases {
        let got = verdict(&w, case);
        assert_eq!(
            got.failed(),
            case.failed,
            "{}: the verifier disagrees with the document: {:#?}",
            case.id,
            got.checks
        );
    }
    let vectors = VectorDir::reset(out, &w.anchors_a, &w.anchors_b);
    let at = unix(verify_at(&w));
    let mut manifest = Vec::new();
    for case in &cases {
        let dir = format!("cases/{}", case.id);
        vectors.write(&format!("{dir}/report.json"), &case.report);
        vectors.write_json(&format!("{dir}/verifier-state.json"), &case.state);
        manifest.push(json!({
            "id": case.id,
            "description": case.description,
            "report": format!("{dir}/report.json"),
            "verifier_state": format!("{dir}/verifier-state.json"),
            "nonce": hex::encode(&case.nonce),
            "pcrs": case.pcrs,
            "trust_anchors": format!("anchors/{}", case.anchors),
            "allow_software_tpm": case.allow_software_tpm,
            "at": at,
            "expect": {"ok": case.failed.is_empty(), "failed": case.failed},
        }));
    }
    vectors.finish("fog-attest-v1-conformance", manifest);
}
