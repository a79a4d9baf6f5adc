//! `fog-tpm` owns everything TPM in fog-agent: the endorsement and attestation keys, quotes, the
//! `fog-attest-v1` report format and its verifier.
//!
//! The verifier is pure Rust and needs no TPM and no libtss2; the TPM side (tss-esapi) sits
//! behind the `tpm` cargo feature. This is the only crate that names `tss_esapi`.
//!
//! - [`wire`], [`structures`]: strict parsers of the TPM structures a verifier reads.
//! - [`credential`]: software `TPM2_MakeCredential` for enrollment.
#![forbid(unsafe_code)]

pub mod ak;
pub mod certs;
pub mod credential;
#[cfg(feature = "tpm")]
pub mod device;
pub mod enroll;
pub mod export;
pub mod identity;
pub mod identity_request;
pub mod idkey;
pub mod receipt;
pub mod report;
pub mod sigverify;
pub mod store;
pub mod strict_json;
pub mod structures;
pub mod tcti;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod verify;
pub mod wire;
