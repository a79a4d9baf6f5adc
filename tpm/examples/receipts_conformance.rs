//! Writes the `fog-receipts-v1` conformance vectors (see `tpm/conformance/receipts/README.md`):
//! a genuine bundle from swtpm, one altered copy per tamper class and per check of
//! `RECEIPTS.md` §6, each with the verdict the document prescribes, and the verifier states and
//! trust anchors they are checked against.
//!
//! `cargo run -p fog-tpm --features test-util --example receipts_conformance -- tpm/conformance/receipts`
//!
//! The cases and their expected verdicts are written by hand in `fog_tpm::testing::receipt_cases`
//! from the document; before anything is written, each case is run through this crate's
//! verifier and the generation stops at the first disagreement.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use fog_tpm::testing::receipt_cases;
use serde_json::json;

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: receipts_conformance OUTPUT_DIR (tpm/conformance/receipts)"),
    );
    let (world, cases) = receipt_cases::build().unwrap();
    for case in &cases {
        let got = world.verdict(case).unwrap();
        assert_eq!(
            got.failed(),
            case.failed,
            "{}: the verifier disagrees with the document: {:#?}",
            case.id,
            got.checks
        );
    }
    let cases_dir = out.join("cases");
    if cases_dir.exists() {
        std::fs::remove_dir_all(&cases_dir).unwrap();
    }
    write(&out.join("anchors/swtpm-a.pem"), &world.anchors_a);
    write(&out.join("anchors/swtpm-b.pem"), &world.anchors_b);
    let at = world.verify_at_unix();
    let mut manifest = Vec::new();
    for case in &cases {
        let dir = cases_dir.join(case.id);
        write(&dir.join("bundle.json"), &case.bundle);
        let mut state = serde_json::to_vec_pretty(&case.state).unwrap();
        state.push(b'\n');
        write(&dir.join("verifier-state.json"), &state);
        manifest.push(json!({
            "id": case.id,
            "description": case.description,
            "bundle": format!("cases/{}/bundle.json", case.id),
            "verifier_state": format!("cases/{}/verifier-state.json", case.id),
            "trust_anchors": format!("anchors/{}", case.anchors),
            "allow_software_tpm": case.allow_software_tpm,
            "at": at,
            "expect": {"passed": case.failed.is_empty(), "failed": case.failed},
        }));
    }
    let mut text = serde_json::to_vec_pretty(&json!({
        "format": "fog-receipts-v1-conformance",
        "cases": manifest,
    }))
    .unwrap();
    text.push(b'\n');
    write(&out.join("manifest.json"), &text);
    println!("{} cases written to {}", cases.len(), out.display());
}
