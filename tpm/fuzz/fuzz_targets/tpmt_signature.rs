//! TPMT_SIGNATURE parser: never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fog_tpm::structures::Signature::parse(data);
});
