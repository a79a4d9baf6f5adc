//! TPM attestation as the daemon serves it: the `fog-attest-v1` payload format ([`payload`]),
//! the [`Attestor`] seam with its domain types, the real attestor over fog-tpm ([`tpm`]), and the
//! outcome counters `/metrics` exports ([`stats`]).
//!
//! The report format and the verifier live in the `fog-tpm` crate; this module decides what the
//! agent puts in the payload and how a request reaches the TPM.

pub mod identity;
pub mod payload;
pub mod stats;
pub mod tpm;

use std::time::SystemTime;

use crate::inventory::Inventory;

pub use identity::TpmIdentity;
pub use stats::{AttestationStats, Operation, OperationCounts, RecordingAttestor};
pub use tpm::TpmAttestor;

/// Why an attestation request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The TPM cannot be reached now (the message names the TCTI).
    #[error("{0}")]
    TpmUnreachable(String),
    /// A request field was rejected.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, as named in the proto (`nonce`, `pcr_selection.pcrs`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The payload could not be built.
    #[error("cannot build the attestation payload")]
    Payload(#[from] payload::PayloadError),
    /// The TPM or the AK failed (the message names the TCTI or the state file).
    #[error("{0}")]
    Failed(String),
}

/// PCR bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrBank {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
}

/// A validated PCR selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank.
    pub bank: PcrBank,
    /// Indices 0..=23, ascending, no duplicates.
    pub pcrs: Vec<u8>,
}

impl Default for PcrSelection {
    fn default() -> Self {
        Self {
            bank: PcrBank::Sha256,
            pcrs: (0..8).collect(),
        }
    }
}

/// A signed `fog-attest-v1` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationReport {
    /// The report JSON, as fog-tpm serializes it.
    pub report_json: Vec<u8>,
    /// Host id.
    pub host_id: String,
    /// When the quote was taken.
    pub created_at: SystemTime,
}

/// What an enroller needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Host id.
    pub host_id: String,
    /// EK public (TPM2B_PUBLIC).
    pub ek_public: Vec<u8>,
    /// EK certificate DER, if the TPM has one.
    pub ek_certificate_der: Option<Vec<u8>>,
    /// Chain certificates from NV.
    pub ek_chain_der: Vec<Vec<u8>>,
    /// AK public (TPM2B_PUBLIC).
    pub ak_public: Vec<u8>,
    /// AK name.
    pub ak_name: Vec<u8>,
}

/// An ActivateCredential request (validated sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationRequest {
    /// TPM2B_ID_OBJECT.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Vec<u8>,
    /// The enroller's nonce.
    pub enroll_nonce: Vec<u8>,
}

/// The proof of an activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationProof {
    /// HMAC-SHA256(secret, "fog-enroll-v1" || host_id || enroll_nonce).
    pub proof: Vec<u8>,
    /// Host id.
    pub host_id: String,
}

/// TPM attestation and enrollment (blocking: callers run it on the blocking pool).
pub trait Attestor: Send + Sync + 'static {
    /// Quotes the PCRs over `nonce` (16 to 64 bytes, validated) and the payload built from
    /// `inventory` and the cached benchmark results.
    fn attest(
        &self,
        nonce: &[u8],
        selection: &PcrSelection,
        inventory: &Inventory,
    ) -> Result<AttestationReport, AttestError>;

    /// The EK and AK an enroller needs.
    fn enrollment(&self) -> Result<Enrollment, AttestError>;

    /// Runs TPM2_ActivateCredential and returns the proof.
    fn activate_credential(
        &self,
        request: &ActivationRequest,
    ) -> Result<ActivationProof, AttestError>;
}
