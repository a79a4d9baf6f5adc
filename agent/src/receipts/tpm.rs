//! [`TpmReceiptKeys`]: the [`ReceiptKeys`] the daemon uses, over the TPM at `[tpm] tcti`: the
//! AK blob and the identity key blob in the state dir (the identity key is created on first
//! use; the AK must exist: enrollment makes it), the TPM opened per call (not reachable:
//! [`AttestError::TpmUnreachable`] naming the TCTI, which the issuer retries).
//!
//! INTERIM: this adapter talks to fog-tpm directly until the agent's shared TPM identity
//! (`crate::attest::identity::TpmIdentity`) is on main; it then delegates to it.

use std::path::PathBuf;
use std::sync::Mutex;

use fog_tpm::ak::{AkBlob, AkStateError};
use fog_tpm::device::{Tpm, TpmError};
use fog_tpm::idkey::IdentityKeyBlob;
use fog_tpm::receipt::{BundleTpm, CertifiedKey};
use fog_tpm::tcti::Tcti;
use sha2::{Digest as _, Sha256};

use super::ReceiptKeys;
use crate::attest::AttestError;

/// The receipts' keys in the TPM at one TCTI.
#[derive(Debug)]
pub struct TpmReceiptKeys {
    tcti: Tcti,
    state_dir: PathBuf,
    /// Serializes TPM use and key creation; caches the certification.
    certified: Mutex<Option<CertifiedKey>>,
}

impl TpmReceiptKeys {
    /// Keys through the TPM at `tcti`, blobs in `state_dir`.
    pub fn new(tcti: Tcti, state_dir: PathBuf) -> Self {
        Self {
            tcti,
            state_dir,
            certified: Mutex::new(None),
        }
    }

    fn err(&self, e: TpmError) -> AttestError {
        match e {
            TpmError::Open { .. } => AttestError::TpmUnreachable(e.to_string()),
            other => AttestError::Failed(format!("TPM at {}: {other}", self.tcti)),
        }
    }

    fn open(&self) -> Result<Tpm, AttestError> {
        Tpm::open(&self.tcti).map_err(|e| self.err(e))
    }

    fn ak(&self) -> Result<AkBlob, AttestError> {
        AkBlob::load(&self.state_dir).map_err(|e| match e {
            AkStateError::Missing(_) => AttestError::Failed(format!(
                "no AK in {}: enroll the host first (fog-agent attest enroll-request)",
                self.state_dir.display()
            )),
            other => AttestError::Failed(other.to_string()),
        })
    }

    fn key(&self, tpm: &Tpm) -> Result<IdentityKeyBlob, AttestError> {
        match IdentityKeyBlob::load(&self.state_dir) {
            Ok(key) => Ok(key),
            Err(AkStateError::Missing(_)) => {
                let key = tpm.create_identity_key().map_err(|e| self.err(e))?;
                key.save(&self.state_dir).map_err(|e| {
                    AttestError::Failed(format!("cannot save the identity key: {e}"))
                })?;
                Ok(key)
            }
            Err(e) => Err(AttestError::Failed(e.to_string())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CertifiedKey>> {
        self.certified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ReceiptKeys for TpmReceiptKeys {
    fn host_id(&self) -> Result<String, AttestError> {
        Ok(self.ak()?.host_id)
    }

    fn key_name(&self) -> Result<Vec<u8>, AttestError> {
        let _held = self.lock();
        let key = match IdentityKeyBlob::load(&self.state_dir) {
            Ok(key) => key,
            Err(_) => self.key(&self.open()?)?,
        };
        fog_tpm::structures::Public::parse_tpm2b(&key.public)
            .ok()
            .and_then(|p| p.name())
            .ok_or_else(|| AttestError::Failed("cannot compute the identity key's name".into()))
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, AttestError> {
        let _held = self.lock();
        let tpm = self.open()?;
        let key = self.key(&tpm)?;
        tpm.sign_digest(&key, digest).map_err(|e| self.err(e))
    }

    fn quote(&self, qualifying_data: &[u8; 32]) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        let _held = self.lock();
        let ak = self.ak()?;
        let tpm = self.open()?;
        let selection = fog_tpm::report::parse_pcr_spec("sha256:0-7")
            .map_err(|e| AttestError::Failed(e.to_string()))?;
        let quote = tpm
            .quote(&ak, qualifying_data, &selection)
            .map_err(|e| self.err(e))?;
        Ok((quote.attest, quote.signature))
    }

    fn certified_key(&self) -> Result<CertifiedKey, AttestError> {
        let mut cached = self.lock();
        if let Some(certified) = cached.as_ref() {
            return Ok(certified.clone());
        }
        let ak = self.ak()?;
        let tpm = self.open()?;
        let key = self.key(&tpm)?;
        let nonce: [u8; 32] = Sha256::digest(&key.public).into();
        let c = tpm
            .certify_identity_key(&ak, &key, &nonce)
            .map_err(|e| self.err(e))?;
        let certified = CertifiedKey {
            key_pub: key.public,
            certify_attest: c.attest,
            certify_signature: c.signature,
        };
        *cached = Some(certified.clone());
        Ok(certified)
    }

    fn bundle_tpm(&self) -> Result<BundleTpm, AttestError> {
        let _held = self.lock();
        let ak = self.ak()?;
        let ek = self.open()?.ek_info(ak.ek_alg).map_err(|e| self.err(e))?;
        Ok(BundleTpm {
            ak_pub: ak.public,
            ek_pub: ek.public,
            ek_cert: ek.cert,
            ek_chain: ek.chain,
        })
    }
}
