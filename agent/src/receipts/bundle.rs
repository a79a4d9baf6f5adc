//! The `fog-receipts-v1` bundle of one job ([`Receipts::bundle`]): everything a verifier needs
//! offline (`fog-agent verify receipts`): the job's signed receipts in chain order, the receipt
//! quotes covering them in quote-chain order, the certified identity key, the AK and the EK with
//! its certificates. Pending drafts are signed and unquoted receipts quoted first, so the bundle
//! covers what the job has used up to now.

use fog_tpm::receipt::{ReceiptBundle, ReceiptQuote, SignedReceipt, BUNDLE_FORMAT};

use super::issuer::{lock, stored, Receipts};
use super::ReceiptError;

impl Receipts {
    /// The `fog-receipts-v1` bundle of a job (pending drafts signed and its unquoted receipts
    /// quoted first: a TPM that cannot be reached fails it) and how many receipts it holds.
    pub fn bundle(&self, job_id: &str) -> Result<(ReceiptBundle, usize), ReceiptError> {
        self.known(job_id)?;
        self.sign_pending()?;
        let mut store = lock(&self.store);
        let receipts = store.receipts_of(job_id)?;
        if receipts.iter().any(|r| r.quote_seq.is_none()) {
            Self::quote_locked(&mut store, self.keys.as_ref())?;
            self.stats.quoted();
        }
        let receipts = store.receipts_of(job_id)?;
        let quotes = store.receipt_quotes_of(job_id)?;
        drop(store);
        let quotes = quotes
            .into_iter()
            .map(|q| {
                Ok(ReceiptQuote {
                    seq: q.seq,
                    prev: q.prev,
                    receipts: serde_json::from_str(&q.receipts_json).map_err(stored)?,
                    attest: q.attest,
                    signature: q.signature,
                })
            })
            .collect::<Result<Vec<_>, ReceiptError>>()?;
        let count = receipts.len();
        let bundle = ReceiptBundle {
            format: BUNDLE_FORMAT.to_owned(),
            host_id: self.signer()?.host_id,
            job_id: job_id.to_owned(),
            tpm: self.tpm_evidence()?,
            identity: self.keys.certified_key()?,
            receipts: receipts
                .into_iter()
                .map(|r| SignedReceipt {
                    body: r.body,
                    signature: r.signature,
                })
                .collect(),
            quotes,
        };
        Ok((bundle, count))
    }

    /// The AK and the EK with its certificates, read from the TPM on the first bundle of this
    /// run (they do not change while the agent runs; the EK's certificates take NV reads).
    fn tpm_evidence(&self) -> Result<fog_tpm::receipt::BundleTpm, ReceiptError> {
        let mut cached = lock(&self.tpm_evidence);
        if let Some(evidence) = cached.as_ref() {
            return Ok(evidence.clone());
        }
        let evidence = self.keys.bundle_tpm()?;
        *cached = Some(evidence.clone());
        Ok(evidence)
    }
}
