//! The TPM side (feature `tpm`, tss-esapi 7.7): EK and its certificates, AK creation, credential
//! activation and quotes; the identity key's creation, signatures and certification are in
//! [`identity`].
//!
//! [`Tpm`] is `Send + Sync` and its methods are blocking: async callers use `spawn_blocking`.
//! Each operation takes the process-wide lock of its TCTI, opens one ESAPI context for its duration (so calls are
//! serialized), and flushes every transient object and session it created before returning,
//! success or not (swtpm has three object slots and no resource manager).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use thiserror::Error;
use tss_esapi::abstraction::ek::create_ek_object_2;
use tss_esapi::abstraction::{ak as tss_ak, AsymmetricAlgorithmSelection, KeyCustomization};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    AuthHandle, KeyHandle, NvIndexHandle, NvIndexTpmHandle, ObjectHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, IdObject, PcrSelectionList, Private, Public as TssPublic,
    SignatureScheme, SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use crate::ak::{AkAlg, AkBlob, EkAlg, AK_FORMAT};
use crate::report::PcrValues;
use crate::structures::{Attest, HashAlg, PcrSelection, Public};
use crate::tcti::Tcti;

pub mod identity;

/// NV index of the RSA-2048 EK certificate.
pub const NV_EK_CERT_RSA2048: u32 = 0x01c0_0002;
/// NV index of the ECC P-256 EK certificate.
pub const NV_EK_CERT_P256: u32 = 0x01c0_000a;
/// NV index of the ECC P-384 EK certificate.
pub const NV_EK_CERT_P384: u32 = 0x01c0_0016;
/// First NV index of the EK certificate chain.
pub const NV_EK_CHAIN_FIRST: u32 = 0x01c0_0100;
/// Last NV index of the EK certificate chain.
pub const NV_EK_CHAIN_LAST: u32 = 0x01c0_01ff;
/// Attempts at a quote whose PCRs did not move before they were read.
const QUOTE_ATTEMPTS: usize = 3;

/// TPM-side failures.
#[derive(Debug, Error)]
pub enum TpmError {
    /// No TPM reachable through the TCTI.
    #[error("no TPM reachable through TCTI \"{tcti}\" ({reason}); choose another with --tcti or `[tpm] tcti` in the config (e.g. device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321)")]
    Open {
        /// The TCTI tried.
        tcti: String,
        /// The ESAPI error, as text (kept out of `source()` so the line is not repeated).
        reason: String,
    },
    /// A TPM command failed.
    #[error("TPM {op} failed: {source}")]
    Command {
        /// What was being done.
        op: &'static str,
        /// The ESAPI error (TPM response code).
        source: tss_esapi::Error,
    },
    /// Data from the TPM did not parse.
    #[error("TPM returned a malformed {what}: {reason}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The PCRs changed between each quote and the following read.
    #[error("PCRs kept changing between quote and read ({QUOTE_ATTEMPTS} attempts)")]
    PcrsUnstable,
    /// A PCR selection cannot be expressed.
    #[error("PCR selection unsupported by the TPM interface: {0}")]
    Selection(String),
    /// The lock was poisoned by a panic in another thread.
    #[error("TPM lock poisoned")]
    Poisoned,
}

fn cmd(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { op, source }
}

/// The EK's public and certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EkInfo {
    /// `TPM2B_PUBLIC`.
    pub public: Vec<u8>,
    /// DER certificate from NV (padding removed), or `None`.
    pub cert: Option<Vec<u8>>,
    /// Chain certificates from NV 0x01c00100-0x01c001ff (DER).
    pub chain: Vec<Vec<u8>>,
}

/// A quote with the PCR values read right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteOutput {
    /// `TPMS_ATTEST` as signed.
    pub attest: Vec<u8>,
    /// `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// PCR values matching the signed digest.
    pub pcrs: PcrValues,
}

/// A TPM reached through one TCTI.
#[derive(Debug)]
pub struct Tpm {
    tcti: Tcti,
    lock: Arc<Mutex<()>>,
}

/// One lock per TCTI in the process: every `Tpm` reaching the same TPM (the attestor, the TLS
/// signer, the receipt signer) takes turns, so no two contexts compete for its object slots.
fn tcti_lock(tcti: &Tcti) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(tcti.to_string()).or_default().clone()
}

/// Turns the attribute set of an AK into one without `restricted` (for negative tests).
#[derive(Debug)]
struct Unrestricted;

impl KeyCustomization for Unrestricted {
    fn attributes(&self, b: ObjectAttributesBuilder) -> ObjectAttributesBuilder {
        b.with_restricted(false)
    }
}

impl Tpm {
    /// A handle on the TPM behind `tcti`; checks it answers.
    pub fn open(tcti: &Tcti) -> Result<Self, TpmError> {
        let tpm = Self {
            tcti: tcti.clone(),
            lock: tcti_lock(tcti),
        };
        tpm.with_context(|_| Ok(()))?;
        Ok(tpm)
    }

    /// The TCTI in use.
    pub fn tcti(&self) -> &Tcti {
        &self.tcti
    }

    fn with_context<T>(
        &self,
        f: impl FnOnce(&mut Context) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let _guard = self.lock.lock().map_err(|_| TpmError::Poisoned)?;
        let open_err = |source: tss_esapi::Error| TpmError::Open {
            tcti: self.tcti.to_string(),
            reason: source.to_string(),
        };
        let conf = TctiNameConf::from_str(&self.tcti.to_string()).map_err(open_err)?;
        let mut ctx = Context::new(conf).map_err(open_err)?;
        f(&mut ctx)
    }

    /// Creates the EK (TCG default template), runs `f` with it, and flushes it.
    fn with_ek<T>(
        ctx: &mut Context,
        alg: EkAlg,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let sel = match alg {
            EkAlg::Rsa => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            EkAlg::Ecc => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
        };
        let ek = create_ek_object_2(ctx, sel, None).map_err(cmd("EK creation"))?;
        let out = f(ctx, ek);
        let flushed = ctx
            .flush_context(ObjectHandle::from(ek))
            .map_err(cmd("EK flush"));
        let out = out?;
        flushed?;
        Ok(out)
    }

    /// Loads the AK under the EK, runs `f`, flushes the AK.
    fn with_ak<T>(
        ctx: &mut Context,
        ek: KeyHandle,
        blob: &AkBlob,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let ak = load_child(ctx, ek, &blob.public, &blob.private, "AK")?;
        with_flushed(ctx, ak, "AK flush", f)
    }

    /// Loads a key created under the `ek_alg` EK, with that EK flushed again right after
    /// loading (one object slot per loaded key, so two keys fit swtpm's three slots).
    fn load_under_ek(
        ctx: &mut Context,
        ek_alg: EkAlg,
        public: &[u8],
        private: &[u8],
        what: &'static str,
    ) -> Result<KeyHandle, TpmError> {
        Self::with_ek(ctx, ek_alg, |ctx, ek| {
            load_child(ctx, ek, public, private, what)
        })
    }

    /// Reads the EK public and its certificate and chain from NV.
    pub fn ek_info(&self, alg: EkAlg) -> Result<EkInfo, TpmError> {
        self.with_context(|ctx| {
            let public = Self::with_ek(ctx, alg, |ctx, ek| {
                let (public, _, _) = ctx.read_public(ek).map_err(cmd("EK read public"))?;
                tpm2b_public(&public)
            })?;
            let cert_index = match (alg, Public::parse_tpm2b(&public).map(|p| p.key)) {
                (EkAlg::Rsa, _) => NV_EK_CERT_RSA2048,
                (
                    EkAlg::Ecc,
                    Ok(crate::structures::PublicKey::Ecc {
                        curve: crate::structures::curve::NIST_P384,
                        ..
                    }),
                ) => NV_EK_CERT_P384,
                (EkAlg::Ecc, _) => NV_EK_CERT_P256,
            };
            let cert =
                read_nv(ctx, cert_index)?.map(|der| crate::certs::trim_der_padding(&der).to_vec());
            let mut chain = Vec::new();
            for index in defined_chain_indices(ctx)? {
                if let Some(der) = read_nv(ctx, index)? {
                    chain.push(crate::certs::trim_der_padding(&der).to_vec());
                }
            }
            Ok(EkInfo {
                public,
                cert,
                chain,
            })
        })
    }

    /// Creates a new AK under the EK (restricted signing key; see attestation.md).
    pub fn create_ak(&self, alg: AkAlg, ek_alg: EkAlg, host_id: &str) -> Result<AkBlob, TpmError> {
        self.create_ak_inner(alg, ek_alg, host_id, true)
    }

    /// Creates an AK without the `restricted` attribute: it can sign anything, so a verifier must
    /// reject it. Only for tests of that rejection.
    #[cfg(feature = "test-util")]
    pub fn create_unrestricted_ak(
        &self,
        alg: AkAlg,
        ek_alg: EkAlg,
        host_id: &str,
    ) -> Result<AkBlob, TpmError> {
        self.create_ak_inner(alg, ek_alg, host_id, false)
    }

    fn create_ak_inner(
        &self,
        alg: AkAlg,
        ek_alg: EkAlg,
        host_id: &str,
        restricted: bool,
    ) -> Result<AkBlob, TpmError> {
        let (key_alg, scheme) = match alg {
            AkAlg::Rsa => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaSsa,
            ),
            AkAlg::Ecc => (
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
            ),
        };
        self.with_context(|ctx| {
            Self::with_ek(ctx, ek_alg, |ctx, ek| {
                let created = if restricted {
                    tss_ak::create_ak_2(
                        ctx,
                        ek,
                        HashingAlgorithm::Sha256,
                        key_alg,
                        scheme,
                        None,
                        None,
                    )
                } else {
                    tss_ak::create_ak_2(
                        ctx,
                        ek,
                        HashingAlgorithm::Sha256,
                        key_alg,
                        scheme,
                        None,
                        Unrestricted,
                    )
                }
                .map_err(cmd("AK creation"))?;
                Ok(AkBlob {
                    format: AK_FORMAT.into(),
                    host_id: host_id.to_string(),
                    alg,
                    ek_alg,
                    public: tpm2b_public(&created.out_public)?,
                    private: created.out_private.value().to_vec(),
                })
            })
        })
    }

    /// `TPM2_ActivateCredential` with the AK and the EK: returns the credential (the auditor's
    /// secret). Fails when the AK is not in the TPM holding the EK the credential was made for.
    pub fn activate_credential(
        &self,
        ak: &AkBlob,
        credential_blob: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let id = IdObject::try_from(credential_blob.to_vec()).map_err(|e| TpmError::Malformed {
            what: "credential blob",
            reason: e.to_string(),
        })?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(|e| {
            TpmError::Malformed {
                what: "encrypted secret",
                reason: e.to_string(),
            }
        })?;
        self.with_context(|ctx| {
            Self::with_ek(ctx, ak.ek_alg, |ctx, ek| {
                Self::with_ak(ctx, ek, ak, |ctx, ak_handle| {
                    let session = ek_policy_session(ctx)?;
                    let result = ctx.execute_with_sessions(
                        (Some(AuthSession::Password), Some(session), None),
                        |ctx| ctx.activate_credential(ak_handle, ek, id, secret),
                    );
                    let flushed = ctx
                        .flush_context(SessionHandle::from(session).into())
                        .map_err(cmd("policy session flush"));
                    let digest = result.map_err(cmd("ActivateCredential"))?;
                    flushed?;
                    Ok(digest.value().to_vec())
                })
            })
        })
    }

    /// Quotes `selection` with the AK over `qualifying_data`, then reads the PCRs; retries when
    /// they moved in between.
    pub fn quote(
        &self,
        ak: &AkBlob,
        qualifying_data: &[u8; 32],
        selection: &PcrSelection,
    ) -> Result<QuoteOutput, TpmError> {
        let tss_sel = tss_selection(selection)?;
        self.with_context(|ctx| {
            Self::with_ek(ctx, ak.ek_alg, |ctx, ek| {
                Self::with_ak(ctx, ek, ak, |ctx, ak_handle| {
                    for _ in 0..QUOTE_ATTEMPTS {
                        let data =
                            Data::try_from(qualifying_data.to_vec()).map_err(cmd("quote data"))?;
                        let (attest, sig) = ctx
                            .execute_with_nullauth_session(|ctx| {
                                ctx.quote(ak_handle, data, SignatureScheme::Null, tss_sel.clone())
                            })
                            .map_err(cmd("Quote"))?;
                        let attest = attest.marshall().map_err(cmd("attest marshal"))?;
                        let signature = sig.marshall().map_err(cmd("signature marshal"))?;
                        let parsed = Attest::parse(&attest).map_err(|e| TpmError::Malformed {
                            what: "TPMS_ATTEST",
                            reason: e.to_string(),
                        })?;
                        let sig_hash = crate::structures::Signature::parse(&signature)
                            .ok()
                            .and_then(|s| HashAlg::from_tpm(s.hash()))
                            .unwrap_or(HashAlg::Sha256);
                        let (pcrs, values) = read_pcrs(ctx, selection)?;
                        let parts: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                        if sig_hash.digest(&parts) == parsed.quote.pcr_digest {
                            return Ok(QuoteOutput {
                                attest,
                                signature,
                                pcrs,
                            });
                        }
                        tracing::debug!("pcrs moved between quote and read; quoting again");
                    }
                    Err(TpmError::PcrsUnstable)
                })
            })
        })
    }

    /// Sends `TPM2_Shutdown(CLEAR)` (an orderly shutdown, so the clock stays "safe" across a
    /// restart). Used by the test harness before stopping a simulator.
    pub fn shutdown(&self) -> Result<(), TpmError> {
        self.with_context(|ctx| {
            ctx.shutdown(tss_esapi::constants::StartupType::Clear)
                .map_err(cmd("Shutdown"))
        })
    }
}

/// Loads a child of the EK `ek` from its blob (the EK's policy session is handled).
fn load_child(
    ctx: &mut Context,
    ek: KeyHandle,
    public: &[u8],
    private: &[u8],
    what: &'static str,
) -> Result<KeyHandle, TpmError> {
    let public = tss_public(public)?;
    let private = Private::try_from(private.to_vec()).map_err(|e| TpmError::Malformed {
        what,
        reason: format!("private blob: {e}"),
    })?;
    tss_ak::load_ak(ctx, ek, None, private, public).map_err(cmd("key load"))
}

/// Runs `f` with the loaded `key`, then flushes it, success or not.
fn with_flushed<T>(
    ctx: &mut Context,
    key: KeyHandle,
    op: &'static str,
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let out = f(ctx, key);
    let flushed = ctx.flush_context(ObjectHandle::from(key)).map_err(cmd(op));
    let out = out?;
    flushed?;
    Ok(out)
}

/// A policy session satisfying the TCG EK policy (PolicySecret(TPM_RH_ENDORSEMENT)).
fn ek_policy_session(ctx: &mut Context) -> Result<AuthSession, TpmError> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(cmd("policy session start"))?
        .ok_or(TpmError::Malformed {
            what: "session handle",
            reason: "none returned".into(),
        })?;
    let policy = PolicySession::try_from(session).map_err(cmd("policy session"))?;
    let r = ctx.execute_with_nullauth_session(|ctx| {
        ctx.policy_secret(
            policy,
            AuthHandle::Endorsement,
            Default::default(),
            Default::default(),
            Default::default(),
            None,
        )
    });
    if let Err(source) = r {
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        return Err(TpmError::Command {
            op: "PolicySecret",
            source,
        });
    }
    Ok(session)
}

fn tss_public(tpm2b: &[u8]) -> Result<TssPublic, TpmError> {
    let parsed = Public::parse_tpm2b(tpm2b).map_err(|e| TpmError::Malformed {
        what: "key public area",
        reason: e.to_string(),
    })?;
    TssPublic::unmarshall(&parsed.bytes).map_err(cmd("public unmarshal"))
}

fn tpm2b_public(public: &TssPublic) -> Result<Vec<u8>, TpmError> {
    let tpmt = public.marshall().map_err(cmd("public marshal"))?;
    let parsed = Public::parse(&tpmt).map_err(|e| TpmError::Malformed {
        what: "TPMT_PUBLIC",
        reason: e.to_string(),
    })?;
    parsed.to_tpm2b().ok_or(TpmError::Malformed {
        what: "TPMT_PUBLIC",
        reason: "too large".into(),
    })
}

fn tss_selection(sel: &PcrSelection) -> Result<PcrSelectionList, TpmError> {
    use tss_esapi::tss2_esys::{TPML_PCR_SELECTION, TPMS_PCR_SELECTION};
    let mut raw = TPML_PCR_SELECTION {
        count: sel.banks.len() as u32,
        pcrSelections: [TPMS_PCR_SELECTION {
            hash: 0,
            sizeofSelect: 0,
            pcrSelect: [0; 4],
        }; 16],
    };
    for (slot, bank) in raw.pcrSelections.iter_mut().zip(&sel.banks) {
        slot.hash = bank.hash;
        slot.sizeofSelect = bank.select.len() as u8;
        for (d, s) in slot.pcrSelect.iter_mut().zip(&bank.select) {
            *d = *s;
        }
    }
    PcrSelectionList::try_from(raw).map_err(|e| TpmError::Selection(e.to_string()))
}

/// Reads the selected PCRs, at most 8 per `TPM2_PCR_Read`; returns the map and the values in
/// selection order.
fn read_pcrs(ctx: &mut Context, sel: &PcrSelection) -> Result<(PcrValues, Vec<Vec<u8>>), TpmError> {
    let mut map = PcrValues::new();
    let mut ordered = Vec::new();
    for bank in &sel.banks {
        let h = HashAlg::from_tpm(bank.hash)
            .ok_or_else(|| TpmError::Selection(format!("bank {:#06x}", bank.hash)))?;
        let indices = bank.indices();
        for chunk in indices.chunks(8) {
            let mut select = vec![0u8; bank.select.len()];
            for i in chunk {
                select[(*i / 8) as usize] |= 1 << (i % 8);
            }
            let part = PcrSelection {
                banks: vec![crate::structures::PcrBankSelection {
                    hash: bank.hash,
                    select,
                }],
            };
            let (_, read_sel, digests) = ctx
                .execute_without_session(|ctx| {
                    ctx.pcr_read(tss_selection(&part).map_err(|_| {
                        tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::InvalidParam)
                    })?)
                })
                .map_err(cmd("PCR_Read"))?;
            if digests.len() != chunk.len() || read_sel.is_empty() {
                return Err(TpmError::Selection(format!(
                    "bank {} is not allocated or lacks some of PCRs {chunk:?}",
                    h.name()
                )));
            }
            for (i, d) in chunk.iter().zip(digests.value()) {
                map.entry(h.name().to_string())
                    .or_default()
                    .insert(*i, hex::encode(d.value()));
                ordered.push(d.value().to_vec());
            }
        }
    }
    Ok((map, ordered))
}

/// Reads a whole NV index with its own (empty) authorization; `None` when it is not defined.
///
/// Not `tss_esapi::abstraction::nv::read_full`: it closes the index's ESYS object, which ESYS
/// shares with the caller's for the same handle, so closing ours after it makes the TSS log an
/// error on stderr.
fn read_nv(ctx: &mut Context, index: u32) -> Result<Option<Vec<u8>>, TpmError> {
    let handle = NvIndexTpmHandle::new(index).map_err(cmd("NV handle"))?;
    let obj = match ctx
        .execute_without_session(|ctx| ctx.tr_from_tpm_public(TpmHandle::NvIndex(handle)))
    {
        Ok(obj) => obj,
        Err(_) => return Ok(None),
    };
    let data = read_nv_object(ctx, NvIndexHandle::from(obj));
    let mut obj = obj;
    let _ = ctx.tr_close(&mut obj);
    data.map(Some)
}

/// The contents of an opened NV index, read in chunks of the TPM's NV buffer size.
fn read_nv_object(ctx: &mut Context, nv: NvIndexHandle) -> Result<Vec<u8>, TpmError> {
    let (public, _) = ctx
        .execute_without_session(|ctx| ctx.nv_read_public(nv))
        .map_err(cmd("NV_ReadPublic"))?;
    let size = public.data_size();
    let chunk = tss_esapi::abstraction::nv::max_nv_buffer_size(ctx)
        .map_err(cmd("NV buffer size"))?
        .clamp(1, usize::from(u16::MAX));
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        // An NV index's size is a u16, so both fit.
        let (Ok(want), Ok(offset)) = (
            u16::try_from((size - data.len()).min(chunk)),
            u16::try_from(data.len()),
        ) else {
            return Err(malformed_nv(format!("size {size} past 64 KiB")));
        };
        let part = ctx
            .execute_with_nullauth_session(|ctx| ctx.nv_read(NvAuth::NvIndex(nv), nv, want, offset))
            .map_err(cmd("NV_Read"))?;
        if part.is_empty() {
            return Err(malformed_nv(format!(
                "no data at offset {offset} of {size}"
            )));
        }
        data.extend_from_slice(part.value());
    }
    Ok(data)
}

fn malformed_nv(reason: String) -> TpmError {
    TpmError::Malformed {
        what: "NV index read",
        reason,
    }
}

/// The defined NV indices in the EK chain range.
fn defined_chain_indices(ctx: &mut Context) -> Result<Vec<u32>, TpmError> {
    use tss_esapi::constants::CapabilityType;
    use tss_esapi::structures::CapabilityData;
    let (data, _more) = ctx
        .get_capability(
            CapabilityType::Handles,
            NV_EK_CHAIN_FIRST,
            NV_EK_CHAIN_LAST - NV_EK_CHAIN_FIRST + 1,
        )
        .map_err(cmd("GetCapability(handles)"))?;
    let CapabilityData::Handles(handles) = data else {
        return Ok(Vec::new());
    };
    Ok(handles
        .into_inner()
        .into_iter()
        .map(u32::from)
        .filter(|h| (NV_EK_CHAIN_FIRST..=NV_EK_CHAIN_LAST).contains(h))
        .collect())
}

/// Loads the AK blob from `state_dir`.
pub fn load_ak(state_dir: &Path) -> Result<AkBlob, crate::ak::AkStateError> {
    AkBlob::load(state_dir)
}

impl Tpm {
    /// The enrollment request for `ak`: EK public, EK certificate and chain, AK public.
    pub fn enroll_request(&self, ak: &AkBlob) -> Result<crate::enroll::EnrollRequest, TpmError> {
        let ek = self.ek_info(ak.ek_alg)?;
        Ok(crate::enroll::EnrollRequest {
            format: crate::enroll::REQUEST_FORMAT.into(),
            host_id: ak.host_id.clone(),
            ek_pub: ek.public,
            ek_cert: ek.cert,
            ek_chain: ek.chain,
            ak_pub: ak.public.clone(),
        })
    }

    /// A complete `fog-attest-v1` report over `payload` (the serialized payload bytes P) for
    /// the auditor's `nonce`.
    pub fn attest(
        &self,
        ak: &AkBlob,
        nonce: &[u8],
        payload: Vec<u8>,
        selection: &PcrSelection,
    ) -> Result<crate::report::Report, TpmError> {
        let ek = self.ek_info(ak.ek_alg)?;
        let qualifying = crate::report::qualifying_data(nonce, &payload);
        let quote = self.quote(ak, &qualifying, selection)?;
        Ok(crate::report::Report {
            format: crate::report::REPORT_FORMAT.into(),
            host_id: ak.host_id.clone(),
            nonce: nonce.to_vec(),
            payload,
            tpm: crate::report::TpmEvidence {
                ak_pub: ak.public.clone(),
                ek_pub: ek.public,
                ek_cert: ek.cert,
                ek_chain: ek.chain,
                quote: crate::report::QuoteEvidence {
                    attest: quote.attest,
                    signature: quote.signature,
                    pcrs: quote.pcrs,
                },
            },
            event_log: None,
        })
    }
}
