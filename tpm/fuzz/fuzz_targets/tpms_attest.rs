//! TPMS_ATTEST parsers (quote and certify): never panic; a parsed quote re-encodes its PCR
//! selection identically.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = fog_tpm::structures::Attest::parse(data) {
        let sel = a.quote.pcr_select.to_bytes();
        assert_eq!(fog_tpm::structures::PcrSelection::parse(&sel).ok(), Some(a.quote.pcr_select));
    }
    let _ = fog_tpm::structures::CertifyAttest::parse(data);
    let _ = fog_tpm::structures::PcrSelection::parse(data);
});
