//! The identity key in the TPM: creation under the ECC endorsement key, ECDSA-SHA256 signatures
//! of caller digests (TLS handshakes, receipts), and `TPM2_Certify` of the key by the AK.

use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::ObjectHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Data, Digest, HashScheme, HashcheckTicket, SignatureScheme};
use tss_esapi::traits::Marshall;
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use super::{cmd, tpm2b_public, with_flushed, Tpm, TpmError, Unrestricted};
use crate::ak::{AkBlob, EkAlg};
use crate::idkey::{IdentityKeyBlob, IDENTITY_KEY_FORMAT};

/// The parent of every identity key: the TCG default ECC P-256 EK (quick to recreate per use).
pub const IDENTITY_PARENT: EkAlg = EkAlg::Ecc;

/// A `TPM2_Certify` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certification {
    /// `TPMS_ATTEST` of type certify, as signed.
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE` by the AK.
    pub signature: Vec<u8>,
}

impl Tpm {
    /// Creates a new identity key: ECC P-256, ECDSA-SHA256, fixedTPM, fixedParent,
    /// sensitiveDataOrigin, userWithAuth (empty auth), sign, not restricted; under the ECC EK.
    pub fn create_identity_key(&self) -> Result<IdentityKeyBlob, TpmError> {
        self.with_context(|ctx| {
            Self::with_ek(ctx, IDENTITY_PARENT, |ctx, ek| {
                let created = tss_esapi::abstraction::ak::create_ak_2(
                    ctx,
                    ek,
                    HashingAlgorithm::Sha256,
                    tss_esapi::abstraction::AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                    SignatureSchemeAlgorithm::EcDsa,
                    None,
                    Unrestricted,
                )
                .map_err(cmd("identity key creation"))?;
                Ok(IdentityKeyBlob {
                    format: IDENTITY_KEY_FORMAT.into(),
                    public: tpm2b_public(&created.out_public)?,
                    private: created.out_private.value().to_vec(),
                })
            })
        })
    }

    /// Signs a SHA-256 `digest` with the identity key: a `TPMT_SIGNATURE` (ECDSA-SHA256).
    pub fn sign_digest(
        &self,
        key: &IdentityKeyBlob,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, TpmError> {
        self.with_context(|ctx| {
            let handle = Self::load_under_ek(
                ctx,
                IDENTITY_PARENT,
                &key.public,
                &key.private,
                "identity key",
            )?;
            with_flushed(ctx, handle, "identity key flush", |ctx, handle| {
                let digest = Digest::try_from(digest.to_vec()).map_err(cmd("digest"))?;
                let scheme = SignatureScheme::EcDsa {
                    hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
                };
                let sig = ctx
                    .execute_with_nullauth_session(|ctx| {
                        ctx.sign(handle, digest, scheme, null_ticket()?)
                    })
                    .map_err(cmd("Sign"))?;
                sig.marshall().map_err(cmd("signature marshal"))
            })
        })
    }

    /// `TPM2_Certify` of the identity key by the AK over `qualifying_data`.
    pub fn certify_identity_key(
        &self,
        ak: &AkBlob,
        key: &IdentityKeyBlob,
        qualifying_data: &[u8; 32],
    ) -> Result<Certification, TpmError> {
        self.with_context(|ctx| {
            let ak_handle = Self::load_under_ek(ctx, ak.ek_alg, &ak.public, &ak.private, "AK")?;
            with_flushed(ctx, ak_handle, "AK flush", |ctx, ak_handle| {
                let handle = Self::load_under_ek(
                    ctx,
                    IDENTITY_PARENT,
                    &key.public,
                    &key.private,
                    "identity key",
                )?;
                with_flushed(ctx, handle, "identity key flush", |ctx, handle| {
                    let data =
                        Data::try_from(qualifying_data.to_vec()).map_err(cmd("certify data"))?;
                    let (attest, sig) = ctx
                        .execute_with_sessions(
                            (
                                Some(AuthSession::Password),
                                Some(AuthSession::Password),
                                None,
                            ),
                            |ctx| {
                                ctx.certify(
                                    ObjectHandle::from(handle),
                                    ak_handle,
                                    data,
                                    SignatureScheme::Null,
                                )
                            },
                        )
                        .map_err(cmd("Certify"))?;
                    Ok(Certification {
                        attest: attest.marshall().map_err(cmd("attest marshal"))?,
                        signature: sig.marshall().map_err(cmd("signature marshal"))?,
                    })
                })
            })
        })
    }
}

/// The NULL hash-check ticket an unrestricted key signs external digests with.
fn null_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}
