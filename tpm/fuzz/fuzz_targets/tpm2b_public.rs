//! TPM2B_PUBLIC parser: never panics; a parsed public re-encodes to the same bytes and names itself.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = fog_tpm::structures::Public::parse_tpm2b(data) {
        assert_eq!(p.to_tpm2b().as_deref(), Some(data));
        let _ = p.name();
        let _ = fog_tpm::verify::check_ak_attributes(&p);
    }
});
