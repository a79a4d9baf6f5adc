//! The `fog-receipt-v1` usage receipts and the `fog-receipts-v1` bundle (normative text:
//! `RECEIPTS.md`): what a receipt says, the bytes its identity-key signature covers, how
//! receipts chain per job, and how the AK's quotes bind batches of receipts to the TPM's clock.
//!
//! The agent builds receipts with these types; [`crate::receipt_verify`] checks a bundle offline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::report::b64;

/// `format` of a receipt body.
pub const RECEIPT_FORMAT: &str = "fog-receipt-v1";
/// `format` of a receipt bundle.
pub const BUNDLE_FORMAT: &str = "fog-receipts-v1";
/// Prefix of the bytes the identity key signs for a receipt (domain separation from the TLS
/// handshakes the same key signs).
pub const RECEIPT_SIGNING_CONTEXT: &[u8] = b"fog-receipt-v1\0";
/// Prefix of a receipt quote's qualifying data.
pub const RECEIPT_QUOTE_CONTEXT: &[u8] = b"fog-receipt-quote-v1\0";
/// `prev` of the first receipt of a job and of the first quote: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which point of a job's life a receipt covers up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The job started (counters zero or near it).
    Start,
    /// A periodic receipt while the job runs.
    Periodic,
    /// The job ended; `termination` says why. Always the last of its chain.
    End,
}

/// Cumulative usage since the job started. Every counter is non-decreasing along a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptUsage {
    /// Running time, ms.
    pub run_millis: u64,
    /// CPU time, ns.
    pub cpu_nanos: u64,
    /// Memory in use x time, MiB x ms.
    pub memory_mib_millis: u64,
    /// Highest memory use seen, bytes.
    pub memory_peak_bytes: u64,
    /// GPU time per GPU (its UUID), ms. A GPU once listed stays listed.
    pub gpu_millis: BTreeMap<String, u64>,
    /// Bytes received by the job.
    pub net_in_bytes: u64,
    /// Bytes sent by the job.
    pub net_out_bytes: u64,
    /// Highest scratch disk use seen, bytes.
    pub disk_peak_bytes: u64,
}

/// What a receipt says; its exact serialized bytes are what is signed and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Always [`RECEIPT_FORMAT`].
    pub format: String,
    /// The host (the AK's enrolled host id).
    pub host_id: String,
    /// The job.
    pub job_id: String,
    /// Position in the job's chain, from 0.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous receipt's body bytes; [`GENESIS`] for seq 0.
    pub prev: String,
    /// Lowercase hex name (`TPM2B_NAME` contents) of the identity key that signs.
    pub key: String,
    /// Start, periodic or end.
    pub kind: ReceiptKind,
    /// The job's labels (a market's deal id, ...).
    pub labels: BTreeMap<String, String>,
    /// The image's manifest digest (`sha256:...`).
    pub image_digest: String,
    /// Lowercase hex SHA-256 of the job spec as the agent stored it.
    pub spec_sha256: String,
    /// Start of the interval this receipt covers (the previous receipt's `to_unix_millis`; the
    /// job's start for seq 0), Unix ms.
    pub from_unix_millis: u64,
    /// End of the interval, Unix ms.
    pub to_unix_millis: u64,
    /// Cumulative usage at `to_unix_millis`.
    pub usage: ReceiptUsage,
    /// Why the job ended (`exited`, `oom_killed`, ...): set on `end`, absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<String>,
}

impl ReceiptBody {
    /// The body bytes: compact JSON, members in declaration order.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, integers and string maps always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses body bytes, held to [`crate::strict_json`] first.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        crate::strict_json::check(bytes)?;
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// A receipt as issued: the body bytes and the identity key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    /// The body bytes B, exactly as signed.
    #[serde(with = "b64")]
    pub body: Vec<u8>,
    /// `TPMT_SIGNATURE` (ECDSA-SHA256) by the identity key over [`signing_digest`]`(B)`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

impl SignedReceipt {
    /// SHA-256(B): the receipt's id, the next receipt's `prev`, and what quotes list.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.body).into()
    }
}

/// The digest the identity key signs for body bytes `body`:
/// SHA-256([`RECEIPT_SIGNING_CONTEXT`] || B).
pub fn signing_digest(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECEIPT_SIGNING_CONTEXT);
    h.update(body);
    h.finalize().into()
}

/// An AK quote over a batch of receipts (of any jobs), in the agent's chain of receipt quotes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptQuote {
    /// Position in the agent's quote chain, from 0.
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous quote's `attest` bytes; [`GENESIS`] for seq 0.
    pub prev: String,
    /// Lowercase hex digests of the receipts this quote covers, in issue order.
    pub receipts: Vec<String>,
    /// `TPMS_ATTEST` (a quote) whose extraData is [`quote_qualifying_data`].
    #[serde(with = "b64")]
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE` by the AK.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
}

impl ReceiptQuote {
    /// SHA-256 of `attest`: the next quote's `prev`.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(&self.attest).into()
    }
}

/// A receipt quote's qualifying data: SHA-256([`RECEIPT_QUOTE_CONTEXT`] || u64be(seq) || prev
/// || receipt digests in order), with `prev` and the digests as 32 raw bytes each.
pub fn quote_qualifying_data(seq: u64, prev: &[u8; 32], receipts: &[[u8; 32]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECEIPT_QUOTE_CONTEXT);
    h.update(seq.to_be_bytes());
    h.update(prev);
    for r in receipts {
        h.update(r);
    }
    h.finalize().into()
}

/// The identity key and the AK's `TPM2_Certify` of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedKey {
    /// The identity key's `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub key_pub: Vec<u8>,
    /// `TPMS_ATTEST` of type certify naming the key.
    #[serde(with = "b64")]
    pub certify_attest: Vec<u8>,
    /// `TPMT_SIGNATURE` of `certify_attest` by the AK.
    #[serde(with = "b64")]
    pub certify_signature: Vec<u8>,
}

/// The TPM keys behind a bundle: the AK and the EK with its certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleTpm {
    /// The AK's `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub ak_pub: Vec<u8>,
    /// The EK's `TPM2B_PUBLIC` (the AK's parent).
    #[serde(with = "b64")]
    pub ek_pub: Vec<u8>,
    /// The EK certificate (DER), or null.
    #[serde(with = "b64::opt")]
    pub ek_cert: Option<Vec<u8>>,
    /// Further certificates (DER) from NV.
    #[serde(with = "b64::list")]
    pub ek_chain: Vec<Vec<u8>>,
}

/// Everything a verifier needs for one job's receipts, offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The host.
    pub host_id: String,
    /// The job whose receipts these are.
    pub job_id: String,
    /// AK and EK.
    pub tpm: BundleTpm,
    /// The identity key and its certification.
    pub identity: CertifiedKey,
    /// The job's receipts in chain order.
    pub receipts: Vec<SignedReceipt>,
    /// The receipt quotes covering them, in quote-chain order.
    pub quotes: Vec<ReceiptQuote>,
}

impl ReceiptBundle {
    /// Parses a bundle, held to [`crate::strict_json`] first.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        crate::strict_json::check(text)?;
        serde_json::from_slice(text).map_err(|e| e.to_string())
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}
