//! `[market] client_key = "tpm"`: the market link's TLS client authentication signs with the
//! TPM-resident identity key (a rustls [`SigningKey`] whose signatures the TPM makes; ECDSA
//! P-256 with SHA-256 only). The key never leaves the TPM, so a copied state directory cannot
//! authenticate from another machine.
//!
//! A handshake's signature is one TPM command (tens of milliseconds on swtpm, similar on
//! hardware); the signer runs it with `block_in_place` on the daemon's multi-threaded runtime,
//! and fog-tpm serializes it with every other use of the TPM.

use std::path::Path;
use std::sync::Arc;

use fog_tpm::ak::AkStateError;
use fog_tpm::identity::sec1_point;
use fog_tpm::idkey::IdentityKeyBlob;
use fog_tpm::structures::Public;
use fog_tpm::tcti::Tcti;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::SubjectPublicKeyInfoDer;
use tokio_rustls::rustls::sign::{Signer, SigningKey};
use tokio_rustls::rustls::{SignatureAlgorithm, SignatureScheme};

use crate::attest::TpmIdentity;

/// The value of `[market] client_key` that selects the TPM key.
pub const TPM_CLIENT_KEY: &str = "tpm";

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1, BIT STRING of 66).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Whether `[market] client_key` names the TPM key rather than a file.
pub fn is_tpm_key(client_key: &Path) -> bool {
    client_key == Path::new(TPM_CLIENT_KEY)
}

/// The identity key as the market link's client key.
#[derive(Debug)]
pub struct TpmClientKey {
    identity: TpmIdentity,
    spki: Vec<u8>,
}

impl TpmClientKey {
    /// The identity key in `state_dir` of the TPM at `tcti`; it must exist already (the
    /// certificate in `[market] client_cert` was issued for it), so no TPM is needed here.
    pub fn load(tcti: Tcti, state_dir: &Path) -> Result<Self, String> {
        let blob = IdentityKeyBlob::load(state_dir).map_err(|e| match e {
            AkStateError::Missing(dir) => format!(
                "market.client_key = \"tpm\": no identity key in {} (create it with `fog-agent attest identity-request`, then have the CA issue market.client_cert with `fog-agent verify identity`)",
                dir.display()
            ),
            other => format!("market.client_key = \"tpm\": {other}"),
        })?;
        let point = Public::parse_tpm2b(&blob.public)
            .ok()
            .as_ref()
            .and_then(sec1_point)
            .filter(|point| point.len() == 65)
            .ok_or("market.client_key = \"tpm\": the identity key is not an ECC P-256 key")?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&point);
        Ok(Self {
            identity: TpmIdentity::new(tcti, state_dir.to_path_buf()),
            spki,
        })
    }
}

impl SigningKey for TpmClientKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(TpmSigner(self.identity.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

/// One handshake's signer.
#[derive(Debug)]
struct TpmSigner(TpmIdentity);

impl Signer for TpmSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let sign = || self.0.sign_message_der(message);
        let signed = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(sign)
            }
            _ => sign(),
        };
        signed.map_err(|e| rustls::Error::General(format!("the TPM identity key: {e}")))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// The client key `[market] client_key` names.
pub fn client_key(
    client_key: &Path,
    tcti: &str,
    state_dir: &Path,
) -> Result<crate::api::tls::ClientKey, String> {
    if !is_tpm_key(client_key) {
        return Ok(crate::api::tls::ClientKey::File(client_key.to_path_buf()));
    }
    let tcti: Tcti = tcti.parse().map_err(|e| format!("tpm.tcti: {e}"))?;
    Ok(crate::api::tls::ClientKey::Signer(Arc::new(
        TpmClientKey::load(tcti, state_dir)?,
    )))
}
