//! Unit tests of the receipt verifier: the published vectors, and the rules one by one.

use super::*;
use crate::receipt::{ReceiptKind, GENESIS};
use crate::structures::ClockInfo;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// The published vectors (`tpm/conformance/receipts`): this verifier gives every case the
/// manifest's verdict.
#[test]
fn verify_agrees_with_every_receipt_conformance_vector() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/receipts");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let read = |member: &str| std::fs::read(dir.join(case[member].as_str().unwrap())).unwrap();
        let state: VerifierState = serde_json::from_slice(&read("verifier_state")).unwrap();
        let opts = ReceiptVerifyOptions {
            trust_anchors: crate::certs::parse_pem_bundle(&read("trust_anchors")).unwrap(),
            allow_software_tpm: case["allow_software_tpm"].as_bool().unwrap(),
        };
        let at = UNIX_EPOCH + Duration::from_secs(case["at"].as_u64().unwrap());
        let verdict = verify_bundle_at(&read("bundle"), &opts, &state, at);
        let expected: Vec<&str> = case["expect"]["failed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(verdict.failed(), expected, "{id}: {:#?}", verdict.checks);
        assert_eq!(
            verdict.passed,
            case["expect"]["passed"].as_bool().unwrap(),
            "{id}"
        );
    }
}

#[test]
fn a_malformed_bundle_has_one_failed_check() {
    let v = verify_bundle(
        b"{\"format\": 1}",
        &ReceiptVerifyOptions::default(),
        &VerifierState::default(),
    );
    assert_eq!(v.failed(), [MALFORMED]);
    assert_eq!(v.checks.len(), 1);
    assert!(!v.passed);
}

#[test]
fn every_check_id_is_distinct() {
    let mut ids: Vec<&str> = CHECKS.iter().map(|c| c.0).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), CHECKS.len());
}

fn body(seq: u64, cpu: u64, gpu: Option<u64>) -> ReceiptBody {
    ReceiptBody {
        format: RECEIPT_FORMAT.into(),
        host_id: "h".into(),
        job_id: "j".into(),
        seq,
        prev: GENESIS.into(),
        key: "00".into(),
        kind: if seq == 0 {
            ReceiptKind::Start
        } else {
            ReceiptKind::Periodic
        },
        labels: BTreeMap::new(),
        image_digest: String::new(),
        spec_sha256: String::new(),
        from_unix_millis: seq * 10,
        to_unix_millis: seq * 10 + 10,
        usage: ReceiptUsage {
            cpu_nanos: cpu,
            gpu_millis: gpu.map(|g| ("GPU-1".to_owned(), g)).into_iter().collect(),
            ..ReceiptUsage::default()
        },
        termination: None,
    }
}

fn parsed(bodies: Vec<ReceiptBody>, quotes: Vec<(u64, u8)>) -> Parsed {
    let quotes: Vec<crate::receipt::ReceiptQuote> = quotes
        .into_iter()
        .map(|(seq, attest)| crate::receipt::ReceiptQuote {
            seq,
            prev: GENESIS.into(),
            receipts: Vec::new(),
            attest: vec![attest],
            signature: Vec::new(),
        })
        .collect();
    Parsed {
        digests: bodies
            .iter()
            .map(|b| {
                crate::receipt::SignedReceipt {
                    body: b.to_bytes(),
                    signature: Vec::new(),
                }
                .digest()
            })
            .collect(),
        quote_links: quotes.iter().map(|_| ([0; 32], Vec::new())).collect(),
        bundle: ReceiptBundle {
            format: BUNDLE_FORMAT.into(),
            host_id: "h".into(),
            job_id: "j".into(),
            tpm: crate::receipt::BundleTpm {
                ak_pub: Vec::new(),
                ek_pub: Vec::new(),
                ek_cert: None,
                ek_chain: Vec::new(),
            },
            identity: crate::receipt::CertifiedKey {
                key_pub: Vec::new(),
                certify_attest: Vec::new(),
                certify_signature: Vec::new(),
            },
            receipts: Vec::new(),
            quotes,
        },
        bodies,
    }
}

#[test]
fn counters_decreasing_a_gpu_gone_or_an_interval_gap_fail_between_chain_neighbours() {
    let ok = parsed(vec![body(0, 5, Some(1)), body(1, 5, Some(2))], vec![]);
    assert_eq!(Chain::new(&ok).counters(), Ok(None));
    let p = parsed(vec![body(0, 5, None), body(1, 4, None)], vec![]);
    assert!(Chain::new(&p)
        .counters()
        .unwrap_err()
        .contains("cpu_nanos 4 is lower"));
    let p = parsed(vec![body(0, 5, Some(1)), body(1, 5, None)], vec![]);
    assert!(Chain::new(&p).counters().unwrap_err().contains("is gone"));
    let mut late = body(1, 5, None);
    late.from_unix_millis += 1;
    let p = parsed(vec![body(0, 5, None), late], vec![]);
    assert!(Chain::new(&p)
        .counters()
        .unwrap_err()
        .contains("interval starts at 11"));
    // Not neighbours (seq 1 missing): no comparison; the gap is chain_gap's.
    let p = parsed(vec![body(0, 5, None), body(2, 1, None)], vec![]);
    assert_eq!(Chain::new(&p).counters(), Ok(None));
    assert_eq!(Chain::new(&p).gap(), Err("seq 1 is missing".into()));
}

#[test]
fn a_termination_outside_an_end_receipt_fails_chain_end() {
    let mut b = body(1, 0, None);
    b.termination = Some("exited".into());
    let p = parsed(vec![body(0, 0, None), b], vec![]);
    assert!(Chain::new(&p)
        .end()
        .unwrap_err()
        .contains("not an end receipt"));
}

#[test]
fn rollback_and_clock_rules() {
    let attest = |reset, clock| Attest {
        qualified_signer: Vec::new(),
        extra_data: Vec::new(),
        clock_info: ClockInfo {
            clock,
            reset_count: reset,
            restart_count: 0,
            safe: true,
        },
        firmware_version: 0,
        quote: crate::structures::QuoteInfo {
            pcr_select: crate::structures::PcrSelection::default(),
            pcr_digest: Vec::new(),
        },
    };
    // seq 0 at 10, seq 5 at 20: fine, in either bundle order for rollback.
    let p = parsed(vec![], vec![(5, 1), (0, 2)]);
    let q = vec![Ok(attest(1, 20)), Ok(attest(1, 10))];
    assert_eq!(check_rollback(&p, &q), Ok(None));
    assert!(check_tpm_clock(&q).unwrap_err().contains("is not later"));
    // seq 0 later than seq 5 (a higher resetCount counts as later).
    let q = vec![Ok(attest(1, 20)), Ok(attest(2, 1))];
    assert!(check_rollback(&p, &q).unwrap_err().contains("rolled back"));
    // Two quotes of one seq: the same bytes are one quote listed twice, different ones two
    // histories.
    let q = vec![Ok(attest(1, 10)), Ok(attest(1, 20))];
    assert_eq!(
        check_rollback(&parsed(vec![], vec![(3, 1), (3, 1)]), &q),
        Ok(None)
    );
    assert!(check_rollback(&parsed(vec![], vec![(3, 1), (3, 2)]), &q)
        .unwrap_err()
        .contains("both have seq 3"));
    // clockInfo.safe is not read: a TPM Reset (the only way the clock restarts lower)
    // raises resetCount, so the triple orders quotes either way.
    let mut unsafe_clock = attest(2, 1);
    unsafe_clock.clock_info.safe = false;
    assert_eq!(
        check_tpm_clock(&[Ok(attest(1, 30)), Ok(unsafe_clock)]),
        Ok(None)
    );
}

/// Single-byte changes all over a genuine bundle: always a verdict, never a panic, and
/// never a pass (base64 is decoded strictly, so even padding bits count).
#[test]
fn altered_bytes_of_a_genuine_bundle_give_a_verdict_and_do_not_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/receipts");
    let text = std::fs::read(dir.join("cases/valid/bundle.json")).unwrap();
    let state: VerifierState = serde_json::from_slice(
        &std::fs::read(dir.join("cases/valid/verifier-state.json")).unwrap(),
    )
    .unwrap();
    let opts = ReceiptVerifyOptions {
        trust_anchors: crate::certs::parse_pem_bundle(
            &std::fs::read(dir.join("anchors/swtpm-a.pem")).unwrap(),
        )
        .unwrap(),
        allow_software_tpm: true,
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(manifest["cases"][0]["at"].as_u64().unwrap());
    assert!(verify_bundle_at(&text, &opts, &state, at).passed);
    let mut passed = 0;
    for at_byte in (0..text.len()).step_by(53) {
        for replacement in [b'A', b'0', b'"', 0xff] {
            if text[at_byte] == replacement {
                continue;
            }
            let mut altered = text.clone();
            altered[at_byte] = replacement;
            let v = verify_bundle_at(&altered, &opts, &state, at);
            assert_eq!(v.passed, v.failed().is_empty());
            passed += usize::from(v.passed);
        }
    }
    assert_eq!(passed, 0, "altered bundles passed");
}
