//! Identity requests: verifying arbitrary input never panics and never accepts (no AK is
//! enrolled in an empty verifier state).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verdict =
        fog_tpm::identity_request::verify_request(data, &[0; 16], &Default::default());
    assert!(!verdict.ok);
});
