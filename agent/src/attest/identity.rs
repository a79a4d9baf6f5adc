//! The host's TPM-resident identity key as the daemon uses it: created on first use next to the
//! AK (`identity-key.json`), certified by the AK once (cached in `identity-certification.json`,
//! redone when the key or the AK changes), and used to sign digests (the market link's TLS
//! handshakes, usage receipts). The AK quotes batches of receipts.
//!
//! Every method is blocking (a TPM command takes milliseconds to tens of milliseconds): async
//! callers use `spawn_blocking`. Calls on one TPM are serialized by fog-tpm.

use std::path::{Path, PathBuf};

use fog_tpm::ak::{AkBlob, AkStateError};
use fog_tpm::device::Tpm;
use fog_tpm::identity::{check_certification, ecdsa_signature_der, sec1_point};
use fog_tpm::identity_request::{
    request_qualifying_data, IdentityRequest, IDENTITY_REQUEST_FORMAT,
};
use fog_tpm::idkey::IdentityKeyBlob;
use fog_tpm::receipt::{BundleTpm, CertifiedKey};
use fog_tpm::report::parse_pcr_spec;
use fog_tpm::structures::Public;
use fog_tpm::tcti::Tcti;
use sha2::{Digest as _, Sha256};

use super::tpm::TpmAttestor;
use super::AttestError;

/// The PCRs a receipt quote covers.
const RECEIPT_QUOTE_PCRS: &str = "sha256:0-7";

/// The identity key of the TPM at one TCTI.
#[derive(Clone)]
pub struct TpmIdentity {
    attestor: TpmAttestor,
    tcti: Tcti,
    state_dir: PathBuf,
}

impl std::fmt::Debug for TpmIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmIdentity")
            .field("tcti", &self.tcti)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl TpmIdentity {
    /// The identity key of the TPM at `tcti`, with the AK and key blobs in `state_dir`.
    pub fn new(tcti: Tcti, state_dir: PathBuf) -> Self {
        Self {
            attestor: TpmAttestor::new(tcti.clone(), state_dir.clone()),
            tcti,
            state_dir,
        }
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Runs `f` on the open TPM with the AK (created on first use); a failed command is told
    /// apart from a TPM gone away.
    fn with_tpm<T>(
        &self,
        f: impl FnOnce(&Tpm, &AkBlob) -> Result<T, fog_tpm::device::TpmError>,
    ) -> Result<T, AttestError> {
        let tpm = self.attestor.open()?;
        let ak = self.attestor.ak(&tpm)?;
        match f(&tpm, &ak) {
            Ok(v) => Ok(v),
            Err(err) => Err(self.attestor.command_failed(tpm, err)),
        }
    }

    /// The identity key blob, created (and saved) on first use.
    pub fn key(&self) -> Result<IdentityKeyBlob, AttestError> {
        match IdentityKeyBlob::load(&self.state_dir) {
            Ok(key) => Ok(key),
            Err(AkStateError::Missing(_)) => {
                let key = self.with_tpm(|tpm, _| tpm.create_identity_key())?;
                key.save(&self.state_dir).map_err(|e| {
                    AttestError::Failed(format!("cannot save the identity key: {e}"))
                })?;
                Ok(key)
            }
            Err(e) => Err(AttestError::Failed(e.to_string())),
        }
    }

    /// The identity key's public area, parsed.
    pub fn public(&self) -> Result<Public, AttestError> {
        let key = self.key()?;
        Public::parse_tpm2b(&key.public)
            .map_err(|e| AttestError::Failed(format!("identity key public area: {e}")))
    }

    /// The identity key's name (`TPM2B_NAME` contents).
    pub fn key_name(&self) -> Result<Vec<u8>, AttestError> {
        self.public()?
            .name()
            .ok_or_else(|| AttestError::Failed("cannot compute the identity key's name".into()))
    }

    /// The enrolled host id (the AK's).
    pub fn host_id(&self) -> Result<String, AttestError> {
        self.with_tpm(|_, ak| Ok(ak.host_id.clone()))
    }

    /// ECDSA-SHA256 over `digest` by the identity key (`TPMT_SIGNATURE` bytes).
    pub fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>, AttestError> {
        let key = self.key()?;
        self.with_tpm(|tpm, _| tpm.sign_digest(&key, digest))
    }

    /// The AK's certification of the identity key over `qualifying_data`.
    pub fn certify(&self, qualifying_data: &[u8; 32]) -> Result<CertifiedKey, AttestError> {
        let key = self.key()?;
        let certification =
            self.with_tpm(|tpm, ak| tpm.certify_identity_key(ak, &key, qualifying_data))?;
        Ok(CertifiedKey {
            key_pub: key.public,
            certify_attest: certification.attest,
            certify_signature: certification.signature,
        })
    }

    /// The cached certification of the identity key (made on first use, and again when the
    /// key or the AK changed).
    pub fn certified_key(&self) -> Result<CertifiedKey, AttestError> {
        let key = self.key()?;
        let ak = self.with_tpm(|_, ak| Ok(ak.clone()))?;
        let ak_public = Public::parse_tpm2b(&ak.public)
            .map_err(|e| AttestError::Failed(format!("AK public area: {e}")))?;
        let cached = fog_tpm::idkey::load_certification(&self.state_dir).filter(|c| {
            c.key_pub == key.public
                && check_certification(
                    &c.key_pub,
                    &c.certify_attest,
                    &c.certify_signature,
                    &ak_public,
                )
                .is_ok()
        });
        if let Some(cached) = cached {
            return Ok(cached);
        }
        let certified = self.certify(&request_qualifying_data(&[], &[]))?;
        fog_tpm::idkey::save_certification(&self.state_dir, &certified)
            .map_err(|e| AttestError::Failed(format!("cannot save the certification: {e}")))?;
        Ok(certified)
    }

    /// The AK and the EK with its certificates, as a receipt bundle carries them.
    pub fn bundle_tpm(&self) -> Result<BundleTpm, AttestError> {
        let (ak, ek) = self.with_tpm(|tpm, ak| Ok((ak.clone(), tpm.ek_info(ak.ek_alg)?)))?;
        Ok(BundleTpm {
            ak_pub: ak.public,
            ek_pub: ek.public,
            ek_cert: ek.cert,
            ek_chain: ek.chain,
        })
    }

    /// An AK quote of sha256:0-7 over `qualifying_data`: (`TPMS_ATTEST`, `TPMT_SIGNATURE`).
    pub fn quote(&self, qualifying_data: &[u8; 32]) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        let selection = parse_pcr_spec(RECEIPT_QUOTE_PCRS)
            .map_err(|e| AttestError::Failed(format!("receipt quote PCRs: {e}")))?;
        let q = self.with_tpm(|tpm, ak| tpm.quote(ak, qualifying_data, &selection))?;
        Ok((q.attest, q.signature))
    }

    /// The identity key's SEC1 uncompressed point (what an X.509 SubjectPublicKeyInfo carries).
    pub fn public_point(&self) -> Result<Vec<u8>, AttestError> {
        sec1_point(&self.public()?)
            .ok_or_else(|| AttestError::Failed("the identity key is not an ECC key".into()))
    }

    /// ECDSA-SHA256 over `message` by the identity key, DER-encoded (as X.509 and TLS carry it).
    pub fn sign_message_der(&self, message: &[u8]) -> Result<Vec<u8>, AttestError> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        let tpmt = self.sign_digest(&digest)?;
        ecdsa_signature_der(&tpmt)
            .map_err(|e| AttestError::Failed(format!("the TPM's signature: {e}")))
    }

    /// A `fog-identity-request-v1` for the CA's `nonce`: a CSR for the identity key (subject
    /// CN and URI SAN `fog://agent/<host_id>`) signed in the TPM, and the AK's certification of
    /// the key over the nonce and the CSR.
    pub fn request(&self, nonce: &[u8]) -> Result<IdentityRequest, AttestError> {
        let host_id = self.host_id()?;
        let csr = self.csr(&host_id)?;
        let identity = self.certify(&request_qualifying_data(nonce, &csr))?;
        let ak_pub = self.with_tpm(|_, ak| Ok(ak.public.clone()))?;
        Ok(IdentityRequest {
            format: IDENTITY_REQUEST_FORMAT.into(),
            host_id,
            nonce: nonce.to_vec(),
            csr,
            ak_pub,
            identity,
        })
    }

    fn csr(&self, host_id: &str) -> Result<Vec<u8>, AttestError> {
        let failed = |e: rcgen::Error| AttestError::Failed(format!("cannot build the CSR: {e}"));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host_id);
        let uri =
            rcgen::string::Ia5String::try_from(format!("fog://agent/{host_id}")).map_err(failed)?;
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let key = CsrKey {
            identity: self,
            point: self.public_point()?,
            error: std::sync::Mutex::new(None),
        };
        match params.serialize_request(&key) {
            Ok(csr) => Ok(csr.der().to_vec()),
            Err(e) => Err(key
                .error
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unwrap_or_else(|| failed(e))),
        }
    }

    /// The TCTI, for messages.
    pub fn tcti(&self) -> &Tcti {
        &self.tcti
    }
}

/// The identity key as rcgen signs a CSR with it; keeps the TPM's error, which rcgen's
/// `RemoteKeyError` would lose.
struct CsrKey<'a> {
    identity: &'a TpmIdentity,
    point: Vec<u8>,
    error: std::sync::Mutex<Option<AttestError>>,
}

impl rcgen::PublicKeyData for CsrKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for CsrKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.identity.sign_message_der(msg).map_err(|e| {
            *self
                .error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}
