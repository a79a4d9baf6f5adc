//! TPMS_ATTEST parser: never panics; whatever parses re-encodes its PCR selection identically.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = fog_tpm::structures::Attest::parse(data) {
        let sel = a.quote.pcr_select.to_bytes();
        assert_eq!(fog_tpm::structures::PcrSelection::parse(&sel).ok(), Some(a.quote.pcr_select));
    }
    let _ = fog_tpm::structures::PcrSelection::parse(data);
});
