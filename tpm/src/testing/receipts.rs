//! Genuine `fog-receipts-v1` bundles made on swtpm, for tests, benches and the conformance
//! vectors: a host (AK, identity key certified by it, enrolled with an auditor), job chains of
//! receipts signed by the identity key, and the host's chain of receipt quotes.

use std::collections::BTreeMap;
use std::error::Error;
use std::time::SystemTime;

use crate::ak::{AkAlg, AkBlob, EkAlg};
use crate::device::Tpm;
use crate::idkey::IdentityKeyBlob;
use crate::receipt::{
    quote_qualifying_data, signing_digest, BundleTpm, CertifiedKey, ReceiptBody, ReceiptBundle,
    ReceiptKind, ReceiptQuote, ReceiptUsage, SignedReceipt, BUNDLE_FORMAT, GENESIS, RECEIPT_FORMAT,
};
use crate::store::Store;
use crate::structures::Public;

/// Errors of the builders.
pub type BuildError = Box<dyn Error + Send + Sync>;

/// Where the host's quote chain stands: the next quote's seq and prev (copy it to replay a
/// rolled-back agent database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuoteChain {
    /// The next quote's seq.
    pub seq: u64,
    /// The next quote's prev: SHA-256 of the last quote's attest, or zeros.
    pub prev: [u8; 32],
}

/// A host on one TPM: its AK, its identity key certified by the AK, and its quote chain.
#[derive(Debug)]
pub struct ReceiptHost {
    /// The TPM.
    pub tpm: Tpm,
    /// The host id the AK is created (and enrolled) for.
    pub host_id: String,
    /// The AK (RSA, under the RSA EK).
    pub ak: AkBlob,
    /// The identity key.
    pub key: IdentityKeyBlob,
    /// The key and the AK's certification of it.
    pub certified: CertifiedKey,
    /// AK and EK as a bundle carries them.
    pub bundle_tpm: BundleTpm,
    /// The quote chain.
    pub quotes: QuoteChain,
}

impl ReceiptHost {
    /// Creates an AK and an identity key on `tpm` and certifies the key by the AK.
    pub fn new(tpm: Tpm, host_id: &str) -> Result<Self, BuildError> {
        let ak = tpm.create_ak(AkAlg::Rsa, EkAlg::Rsa, host_id)?;
        let key = tpm.create_identity_key()?;
        let certification = tpm.certify_identity_key(&ak, &key, &[0x42; 32])?;
        let ek = tpm.ek_info(ak.ek_alg)?;
        Ok(Self {
            certified: CertifiedKey {
                key_pub: key.public.clone(),
                certify_attest: certification.attest,
                certify_signature: certification.signature,
            },
            bundle_tpm: BundleTpm {
                ak_pub: ak.public.clone(),
                ek_pub: ek.public,
                ek_cert: ek.cert,
                ek_chain: ek.chain,
            },
            tpm,
            host_id: host_id.into(),
            ak,
            key,
            quotes: QuoteChain {
                seq: 0,
                prev: [0; 32],
            },
        })
    }

    /// The identity key's name, lowercase hex (what receipts carry as `key`).
    pub fn key_name(&self) -> String {
        Public::parse_tpm2b(&self.key.public)
            .ok()
            .and_then(|p| p.name())
            .map(hex::encode)
            .unwrap_or_default()
    }

    /// Enrolls the AK with the auditor state in `store` (credential activation), trusting the
    /// EK CA in `anchors_pem`.
    pub fn enroll(
        &self,
        store: &Store,
        anchors_pem: &[u8],
        at: SystemTime,
    ) -> Result<(), BuildError> {
        let opts = crate::verify::VerifyOptions {
            nonce: vec![0; 8],
            pcrs: crate::report::parse_pcr_spec("sha256:0-7")?,
            trust_anchors: crate::certs::parse_pem_bundle(anchors_pem)?,
            allow_software_tpm: true,
            now: at,
            max_age: None,
        };
        let req = self.tpm.enroll_request(&self.ak)?;
        let challenge = crate::enroll::create_challenge(store, &req, &opts)?;
        let secret = self.tpm.activate_credential(
            &self.ak,
            &challenge.credential_blob,
            &challenge.encrypted_secret,
        )?;
        crate::enroll::finish(store, &crate::enroll::make_proof(&challenge, &secret), at)?;
        Ok(())
    }

    /// Signs `body` with the identity key.
    pub fn sign(&self, body: &ReceiptBody) -> Result<SignedReceipt, BuildError> {
        let bytes = body.to_bytes();
        let signature = self.tpm.sign_digest(&self.key, &signing_digest(&bytes))?;
        Ok(SignedReceipt {
            body: bytes,
            signature,
        })
    }

    /// The next quote of the chain, over `receipts` (digests in issue order); advances the chain.
    pub fn quote(&mut self, receipts: &[[u8; 32]]) -> Result<ReceiptQuote, BuildError> {
        let qd = quote_qualifying_data(self.quotes.seq, &self.quotes.prev, receipts);
        let out = self
            .tpm
            .quote(&self.ak, &qd, &crate::report::parse_pcr_spec("sha256:0-7")?)?;
        let quote = ReceiptQuote {
            seq: self.quotes.seq,
            prev: hex::encode(self.quotes.prev),
            receipts: receipts.iter().map(hex::encode).collect(),
            attest: out.attest,
            signature: out.signature,
        };
        self.quotes = QuoteChain {
            seq: self.quotes.seq + 1,
            prev: quote.digest(),
        };
        Ok(quote)
    }

    /// A bundle of this host for `job_id`.
    pub fn bundle(
        &self,
        job_id: &str,
        receipts: Vec<SignedReceipt>,
        quotes: Vec<ReceiptQuote>,
    ) -> ReceiptBundle {
        ReceiptBundle {
            format: BUNDLE_FORMAT.into(),
            host_id: self.host_id.clone(),
            job_id: job_id.into(),
            tpm: self.bundle_tpm.clone(),
            identity: self.certified.clone(),
            receipts,
            quotes,
        }
    }
}

/// Interval of each receipt of [`JobChain`]: ten minutes.
pub const INTERVAL_MILLIS: u64 = 600_000;

/// One job's receipt chain as an agent builds it, with plausible growing counters.
#[derive(Debug, Clone)]
pub struct JobChain {
    /// Host id the receipts name.
    pub host_id: String,
    /// The job.
    pub job_id: String,
    /// The identity key name the receipts name.
    pub key: String,
    /// When the job started, Unix ms.
    pub start_unix_millis: u64,
    /// The bodies issued so far.
    pub bodies: Vec<ReceiptBody>,
    /// The receipts issued so far.
    pub receipts: Vec<SignedReceipt>,
}

impl JobChain {
    /// An empty chain of `host`'s key for `job_id`.
    pub fn new(host: &ReceiptHost, job_id: &str, start_unix_millis: u64) -> Self {
        Self {
            host_id: host.host_id.clone(),
            job_id: job_id.into(),
            key: host.key_name(),
            start_unix_millis,
            bodies: Vec::new(),
            receipts: Vec::new(),
        }
    }

    /// The usage after `n` intervals.
    pub fn usage_at(n: u64) -> ReceiptUsage {
        ReceiptUsage {
            run_millis: n * INTERVAL_MILLIS,
            cpu_nanos: n * 450_000_000_000,
            memory_mib_millis: n * 512 * INTERVAL_MILLIS,
            memory_peak_bytes: if n == 0 { 0 } else { 600 << 20 },
            gpu_millis: BTreeMap::from([(
                "GPU-2f0c5a1e-6b1d-4c1e-9a35-000000000001".to_owned(),
                n * 590_000,
            )]),
            net_in_bytes: n * 1_000_000,
            net_out_bytes: n * 250_000,
            disk_peak_bytes: n.min(3) << 30,
        }
    }

    /// The next body of the chain, of `kind` (an `end` with termination `exited`).
    pub fn next_body(&self, kind: ReceiptKind) -> ReceiptBody {
        let seq = self.bodies.len() as u64;
        let (prev, from) = match (self.bodies.last(), self.receipts.last()) {
            (Some(b), Some(r)) => (hex::encode(r.digest()), b.to_unix_millis),
            _ => (GENESIS.to_owned(), self.start_unix_millis),
        };
        let to = if seq == 0 {
            from
        } else {
            from + INTERVAL_MILLIS
        };
        ReceiptBody {
            format: RECEIPT_FORMAT.into(),
            host_id: self.host_id.clone(),
            job_id: self.job_id.clone(),
            seq,
            prev,
            key: self.key.clone(),
            kind,
            labels: BTreeMap::from([("deal".to_owned(), format!("deal-{}", self.job_id))]),
            image_digest: format!("sha256:{}", "ab".repeat(32)),
            spec_sha256: "cd".repeat(32),
            from_unix_millis: from,
            to_unix_millis: to,
            usage: Self::usage_at(seq),
            termination: (kind == ReceiptKind::End).then(|| "exited".to_owned()),
        }
    }

    /// Signs the next body of `kind` with `host`'s key and appends it; returns its digest.
    pub fn issue(&mut self, host: &ReceiptHost, kind: ReceiptKind) -> Result<[u8; 32], BuildError> {
        let body = self.next_body(kind);
        let signed = host.sign(&body)?;
        let digest = signed.digest();
        self.bodies.push(body);
        self.receipts.push(signed);
        Ok(digest)
    }
}
