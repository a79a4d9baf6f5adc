//! Receipt bundles: verifying arbitrary input never panics and never passes (no AK is enrolled
//! in an empty verifier state, no trust anchor is configured).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verdict = fog_tpm::receipt_verify::verify_bundle(
        data,
        &fog_tpm::receipt_verify::ReceiptVerifyOptions::default(),
        &Default::default(),
    );
    assert!(!verdict.passed);
});
