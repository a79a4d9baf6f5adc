//! The [`ReceiptKeys`] the daemon uses: the agent's TPM identity
//! ([`crate::attest::identity::TpmIdentity`], the TPM at `[tpm] tcti`, the AK and the identity
//! key blobs in the state dir). A TPM that cannot be reached is
//! [`crate::attest::AttestError::TpmUnreachable`] naming the TCTI, which the issuer retries.

use fog_tpm::receipt::{BundleTpm, CertifiedKey};

use super::ReceiptKeys;
use crate::attest::identity::TpmIdentity;
use crate::attest::AttestError;

impl ReceiptKeys for TpmIdentity {
    fn host_id(&self) -> Result<String, AttestError> {
        TpmIdentity::host_id(self)
    }

    fn key_name(&self) -> Result<Vec<u8>, AttestError> {
        TpmIdentity::key_name(self)
    }

    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, AttestError> {
        TpmIdentity::sign_digest(self, digest)
    }

    fn quote(&self, qualifying_data: &[u8; 32]) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        TpmIdentity::quote(self, qualifying_data)
    }

    fn certified_key(&self) -> Result<CertifiedKey, AttestError> {
        TpmIdentity::certified_key(self)
    }

    fn bundle_tpm(&self) -> Result<BundleTpm, AttestError> {
        TpmIdentity::bundle_tpm(self)
    }
}
