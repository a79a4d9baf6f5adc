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

use std::path::PathBuf;

use fog_tpm::testing::receipt_cases;
use serde_json::json;
use vectors::VectorDir;

mod vectors;

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
    let vectors = VectorDir::reset(out, &world.anchors_a, &world.anchors_b);
    let at = world.verify_at_unix();
    let mut manifest = Vec::new();
    for case in &cases {
        let dir = format!("cases/{}", case.id);
        vectors.write(&format!("{dir}/bundle.json"), &case.bundle);
        vectors.write_json(&format!("{dir}/verifier-state.json"), &case.state);
        manifest.push(json!({
            "id": case.id,
            "description": case.description,
            "bundle": format!("{dir}/bundle.json"),
            "verifier_state": format!("{dir}/verifier-state.json"),
            "trust_anchors": format!("anchors/{}", case.anchors),
            "allow_software_tpm": case.allow_software_tpm,
            "at": at,
            "expect": {"passed": case.failed.is_empty(), "failed": case.failed},
        }));
    }
    vectors.finish("fog-receipts-v1-conformance", manifest);
}
