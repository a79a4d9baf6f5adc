//! `fog-tpm` owns everything TPM in fog-agent: the endorsement and attestation keys, quotes, the
//! `fog-attest-v1` report format and its verifier.
//!
//! The verifier is pure Rust and needs no TPM and no libtss2; the TPM side (tss-esapi) sits
//! behind the `tpm` cargo feature. This is the only crate that names `tss_esapi`.
