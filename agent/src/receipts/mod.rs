//! Signed usage receipts (`fog-receipt-v1`, format in `fog_tpm::receipt`, normative text in
//! `tpm/RECEIPTS.md`): for every job that ran, a `start` receipt, a `periodic` one every
//! `[receipts] interval_secs` of run time, and an `end` one with the termination reason; each
//! signed by the TPM-resident identity key and chained per job, and batches of them quoted by
//! the AK so the TPM's clock orders them and a rolled-back database shows.
//!
//! - [`draft`]: what receipt a job needs next and its body (pure: from the job's view).
//! - [`issuer`]: [`Receipts`], the issuer: follows the job runner's state changes on a thread
//!   of its own (never in the way of StartJob or the telemetry tick), stores drafts durably,
//!   signs them in order when the TPM answers, quotes, and streams what it signs.
//! - [`bundle`]: the `fog-receipts-v1` bundle of one job.
//! - [`stats`]: the issuer's counters for `/metrics`.
//! - [`tpm`]: the [`ReceiptKeys`] seam, implemented by the agent's TPM identity
//!   ([`crate::attest::identity::TpmIdentity`]).
//!
//! Figures (see [`draft`] for each field's source): GPU time is keyed by the GPU's UUID when
//! the inventory knows it (NVML), else by its PCI bus id; `memory_peak_bytes` is the cgroup's
//! own high-water mark as last sampled; `disk_peak_bytes` is the largest scratch use among the
//! samples the issuer read (a lower bound of the true peak between samples).
//!
//! Durability: a receipt is decided (a draft, with its figures) and committed to the jobs'
//! SQLite database before anything else happens to it; it is signed later, in issue order,
//! however long the TPM is away. Drafts and receipts go with their job's record (retention).

pub mod bundle;
pub mod draft;
pub mod issuer;
pub mod stats;
pub mod tpm;

use fog_tpm::receipt::{BundleTpm, CertifiedKey};

use crate::attest::AttestError;
use crate::state::StateError;

pub use issuer::{Issued, Receipts};
pub use stats::ReceiptStats;

/// What the receipts need of the TPM (blocking: called from the issuer's thread or the
/// blocking pool).
pub trait ReceiptKeys: Send + Sync + 'static {
    /// The host id (the AK's enrolled host id).
    fn host_id(&self) -> Result<String, AttestError>;
    /// The identity key's name (`TPM2B_NAME` contents).
    fn key_name(&self) -> Result<Vec<u8>, AttestError>;
    /// Signs a SHA-256 digest with the identity key: a `TPMT_SIGNATURE`.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, AttestError>;
    /// The AK's quote (sha256:0-7) over `qualifying_data`: `(TPMS_ATTEST, TPMT_SIGNATURE)`.
    fn quote(&self, qualifying_data: &[u8; 32]) -> Result<(Vec<u8>, Vec<u8>), AttestError>;
    /// The identity key and the AK's certification of it.
    fn certified_key(&self) -> Result<CertifiedKey, AttestError>;
    /// The AK and the EK with its certificates.
    fn bundle_tpm(&self) -> Result<BundleTpm, AttestError>;
}

/// Why a receipt request failed.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// No such job.
    #[error("job_id: no job {0:?}")]
    NotFound(String),
    /// Receipts are off (`[receipts] enabled = false`).
    #[error("receipts are not enabled in this agent ([receipts] enabled = false)")]
    Disabled,
    /// The TPM failed or cannot be reached.
    #[error(transparent)]
    Tpm(#[from] AttestError),
    /// The state database.
    #[error(transparent)]
    State(#[from] StateError),
    /// A stored receipt, draft or quote cannot be read back.
    #[error("stored receipt: {0}")]
    Stored(String),
}
