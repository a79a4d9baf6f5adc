//! Report JSON: parsing and full verification of arbitrary input never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = fog_tpm::report::Report::from_json(data) {
        let opts = fog_tpm::verify::VerifyOptions {
            nonce: vec![0; 32],
            pcrs: fog_tpm::report::parse_pcr_spec("sha256:0-7").unwrap_or_default(),
            trust_anchors: Vec::new(),
            allow_software_tpm: false,
            now: std::time::SystemTime::UNIX_EPOCH,
            max_age: None,
        };
        let v = fog_tpm::verify::verify_report(&report, &opts, &Default::default());
        assert!(!v.ok);
        let _ = fog_tpm::export::serialized_pcrs(&report);
    }
});
