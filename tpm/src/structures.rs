//! Strict parsers for the TPM 2.0 structures a quote verifier needs: `TPMS_ATTEST` (quote),
//! `TPMT_SIGNATURE`, `TPM2B_PUBLIC`/`TPMT_PUBLIC` and `TPML_PCR_SELECTION`, plus object names.
//!
//! Layouts follow TPM 2.0 Part 2 (Structures). All integers are big-endian. Parsers accept only
//! what a fog-attest-v1 verifier can use and reject trailing bytes.

use sha2::{Sha256, Sha384, Sha512};

use crate::wire::{ParseError, Reader};

/// `TPM_GENERATED_VALUE`: the magic at the start of every TPM-generated `TPMS_ATTEST`.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`: the `TPMS_ATTEST` type of a quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ST_ATTEST_CERTIFY`: the `TPMS_ATTEST` type of `TPM2_Certify`.
pub const TPM_ST_ATTEST_CERTIFY: u16 = 0x8017;

/// `TPM_RH_ENDORSEMENT`: the endorsement hierarchy handle.
pub const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;

/// TPM algorithm identifiers (`TPM_ALG_ID`) used here.
pub mod alg {
    /// RSA key.
    pub const RSA: u16 = 0x0001;
    /// SHA-1 (never accepted for signatures or PCR banks).
    pub const SHA1: u16 = 0x0004;
    /// AES block cipher.
    pub const AES: u16 = 0x0006;
    /// SHA-256.
    pub const SHA256: u16 = 0x000b;
    /// SHA-384.
    pub const SHA384: u16 = 0x000c;
    /// SHA-512.
    pub const SHA512: u16 = 0x000d;
    /// The null algorithm.
    pub const NULL: u16 = 0x0010;
    /// RSASSA-PKCS1-v1_5 signatures.
    pub const RSASSA: u16 = 0x0014;
    /// RSAES-PKCS1-v1_5 encryption.
    pub const RSAES: u16 = 0x0015;
    /// RSASSA-PSS signatures.
    pub const RSAPSS: u16 = 0x0016;
    /// RSAES-OAEP encryption.
    pub const OAEP: u16 = 0x0017;
    /// ECDSA signatures.
    pub const ECDSA: u16 = 0x0018;
    /// ECDH key exchange.
    pub const ECDH: u16 = 0x0019;
    /// ECDAA signatures.
    pub const ECDAA: u16 = 0x001a;
    /// SM2 signatures.
    pub const SM2: u16 = 0x001b;
    /// EC-Schnorr signatures.
    pub const ECSCHNORR: u16 = 0x001c;
    /// ECC key.
    pub const ECC: u16 = 0x0023;
    /// CFB block-cipher mode.
    pub const CFB: u16 = 0x0043;
}

/// TPM ECC curve identifiers (`TPM_ECC_CURVE`).
pub mod curve {
    /// NIST P-256.
    pub const NIST_P256: u16 = 0x0003;
    /// NIST P-384.
    pub const NIST_P384: u16 = 0x0004;
}

/// `TPMA_OBJECT` bits.
pub mod attr {
    /// fixedTPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// stClear.
    pub const ST_CLEAR: u32 = 1 << 2;
    /// fixedParent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// adminWithPolicy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// noDA.
    pub const NO_DA: u32 = 1 << 10;
    /// encryptedDuplication.
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    /// restricted.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign (signEncrypt).
    pub const SIGN: u32 = 1 << 18;
    /// Exactly the attributes of a fog attestation key.
    pub const AK: u32 =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN;
    /// Exactly the attributes of a fog identity key: an AK without `restricted`, so it signs
    /// digests it did not hash itself (TLS handshakes, receipts).
    pub const IDENTITY: u32 =
        FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | SIGN;
}

/// Largest digest a TPM structure can carry (SHA-512).
const MAX_DIGEST: usize = 64;
/// Largest RSA key or signature handled (RSA-4096).
const MAX_RSA_BYTES: usize = 512;
/// Largest ECC coordinate handled (P-521).
const MAX_ECC_BYTES: usize = 66;
/// Largest `TPML_PCR_SELECTION` count (`HASH_COUNT` in tpm2-tss).
pub const MAX_PCR_BANKS: usize = 16;
/// Largest `sizeofSelect` (`PCR_SELECT_MAX` in tpm2-tss: 32 PCRs).
pub const MAX_PCR_SELECT: usize = 4;

/// A hash algorithm this verifier accepts (SHA-1 is deliberately absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlg {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The algorithm for a `TPM_ALG_ID`, if accepted.
    pub fn from_tpm(id: u16) -> Option<Self> {
        match id {
            alg::SHA256 => Some(Self::Sha256),
            alg::SHA384 => Some(Self::Sha384),
            alg::SHA512 => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The algorithm for a PCR bank name as used in reports and `--pcrs` (`sha256`...).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The `TPM_ALG_ID`.
    pub fn tpm_id(self) -> u16 {
        match self {
            Self::Sha256 => alg::SHA256,
            Self::Sha384 => alg::SHA384,
            Self::Sha512 => alg::SHA512,
        }
    }

    /// The lowercase name (`sha256`...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Hashes the concatenation of `parts`.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Self::Sha256 => run::<Sha256>(parts),
            Self::Sha384 => run::<Sha384>(parts),
            Self::Sha512 => run::<Sha512>(parts),
        }
    }

    /// HMAC of the concatenation of `parts` under `key`.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        use hmac::{Mac, SimpleHmac};
        fn run<D: sha2::Digest + sha2::digest::core_api::BlockSizeUser>(
            key: &[u8],
            parts: &[&[u8]],
        ) -> Vec<u8> {
            // SimpleHmac accepts keys of any length, so construction cannot fail.
            let mut mac = match <SimpleHmac<D> as Mac>::new_from_slice(key) {
                Ok(mac) => mac,
                Err(_) => return Vec::new(),
            };
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Sha256>(key, parts),
            Self::Sha384 => run::<Sha384>(key, parts),
            Self::Sha512 => run::<Sha512>(key, parts),
        }
    }
}

/// One `TPMS_PCR_SELECTION`: a bank and its PCR bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrBankSelection {
    /// The bank's hash algorithm (`TPMI_ALG_HASH`), as found on the wire.
    pub hash: u16,
    /// The bitmap: bit `i % 8` of byte `i / 8` selects PCR `i`.
    pub select: Vec<u8>,
}

impl PcrBankSelection {
    /// Selected PCR indices, ascending.
    pub fn indices(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (byte_index, byte) in self.select.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    // byte_index < MAX_PCR_SELECT, so this cannot overflow.
                    out.push(byte_index as u32 * 8 + bit);
                }
            }
        }
        out
    }
}

/// `TPML_PCR_SELECTION`: the banks and PCRs a quote covers, in signed order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrSelection {
    /// The banks in wire order.
    pub banks: Vec<PcrBankSelection>,
}

impl PcrSelection {
    fn read(r: &mut Reader<'_>) -> Result<Self, ParseError> {
        let at = r.pos();
        let count = r.u32("pcrSelections.count")?;
        if count as usize > MAX_PCR_BANKS {
            return Err(r.bad("pcrSelections.count", count.into(), at));
        }
        let mut banks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let hash = r.u16("pcrSelections.hash")?;
            let at = r.pos();
            let size = r.u8("pcrSelections.sizeofSelect")?;
            if usize::from(size) > MAX_PCR_SELECT {
                return Err(r.bad("pcrSelections.sizeofSelect", size.into(), at));
            }
            let select = r
                .bytes(usize::from(size), "pcrSelections.pcrSelect")?
                .to_vec();
            banks.push(PcrBankSelection { hash, select });
        }
        Ok(Self { banks })
    }

    /// Parses a standalone `TPML_PCR_SELECTION`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes, "TPML_PCR_SELECTION");
        let sel = Self::read(&mut r)?;
        r.finish()?;
        Ok(sel)
    }

    /// Marshals the structure as the TPM does.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.banks.len() as u32).to_be_bytes());
        for bank in &self.banks {
            out.extend_from_slice(&bank.hash.to_be_bytes());
            out.push(bank.select.len() as u8);
            out.extend_from_slice(&bank.select);
        }
        out
    }

    /// (bank algorithm id, PCR index) pairs in signed order: banks in wire order, indices
    /// ascending within a bank.
    pub fn pairs(&self) -> Vec<(u16, u32)> {
        self.banks
            .iter()
            .flat_map(|b| b.indices().into_iter().map(move |i| (b.hash, i)))
            .collect()
    }
}

/// `TPMS_CLOCK_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last clear.
    pub clock: u64,
    /// TPM resets (Startup(CLEAR) without an orderly shutdown, or after one).
    pub reset_count: u32,
    /// TPM restarts and resumes since the last reset.
    pub restart_count: u32,
    /// Whether `clock` is known not to have gone backwards.
    pub safe: bool,
}

/// `TPMS_QUOTE_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The PCRs covered.
    pub pcr_select: PcrSelection,
    /// Hash of the selected PCR values, in selection order.
    pub pcr_digest: Vec<u8>,
}

/// A `TPMS_ATTEST` of type quote, parsed strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// Name of the signing key (`TPM2B_NAME`).
    pub qualified_signer: Vec<u8>,
    /// Caller-provided qualifying data (`TPM2B_DATA`).
    pub extra_data: Vec<u8>,
    /// Clock state at signing time.
    pub clock_info: ClockInfo,
    /// Vendor firmware version.
    pub firmware_version: u64,
    /// The quote body.
    pub quote: QuoteInfo,
}

/// `TPMS_CERTIFY_INFO`: the object `TPM2_Certify` vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifyInfo {
    /// Name of the certified object.
    pub name: Vec<u8>,
    /// Qualified name of the certified object.
    pub qualified_name: Vec<u8>,
}

/// A `TPMS_ATTEST` of type certify, parsed strictly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifyAttest {
    /// Name of the signing key (`TPM2B_NAME`).
    pub qualified_signer: Vec<u8>,
    /// Caller-provided qualifying data (`TPM2B_DATA`).
    pub extra_data: Vec<u8>,
    /// Clock state at signing time.
    pub clock_info: ClockInfo,
    /// Vendor firmware version.
    pub firmware_version: u64,
    /// The certify body.
    pub certified: CertifyInfo,
}

/// The members every `TPMS_ATTEST` starts with, after magic and type.
struct AttestHeader {
    qualified_signer: Vec<u8>,
    extra_data: Vec<u8>,
    clock_info: ClockInfo,
    firmware_version: u64,
}

/// Reads magic, type (which must be `want`), and the common members.
fn read_attest_header(r: &mut Reader<'_>, want: u16) -> Result<AttestHeader, ParseError> {
    let at = r.pos();
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED_VALUE {
        return Err(r.bad("magic", magic.into(), at));
    }
    let at = r.pos();
    let kind = r.u16("type")?;
    if kind != want {
        return Err(r.bad("type", kind.into(), at));
    }
    // TPM2B_NAME: a handle (4 bytes) or nameAlg + digest.
    let qualified_signer = r.tpm2b("qualifiedSigner", 2 + MAX_DIGEST)?.to_vec();
    let extra_data = r.tpm2b("extraData", MAX_DIGEST)?.to_vec();
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    let at = r.pos();
    let safe = match r.u8("clockInfo.safe")? {
        0 => false,
        1 => true,
        other => return Err(r.bad("clockInfo.safe", other.into(), at)),
    };
    let firmware_version = r.u64("firmwareVersion")?;
    Ok(AttestHeader {
        qualified_signer,
        extra_data,
        clock_info: ClockInfo {
            clock,
            reset_count,
            restart_count,
            safe,
        },
        firmware_version,
    })
}

impl Attest {
    /// Parses a `TPMS_ATTEST`; only quotes (`TPM_ST_ATTEST_QUOTE`) with the TPM magic are accepted.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let h = read_attest_header(&mut r, TPM_ST_ATTEST_QUOTE)?;
        let pcr_select = PcrSelection::read(&mut r)?;
        let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer: h.qualified_signer,
            extra_data: h.extra_data,
            clock_info: h.clock_info,
            firmware_version: h.firmware_version,
            quote: QuoteInfo {
                pcr_select,
                pcr_digest,
            },
        })
    }
}

impl CertifyAttest {
    /// Parses a `TPMS_ATTEST`; only certifications (`TPM_ST_ATTEST_CERTIFY`) with the TPM magic
    /// are accepted.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let h = read_attest_header(&mut r, TPM_ST_ATTEST_CERTIFY)?;
        let name = r.tpm2b("attested.name", 2 + MAX_DIGEST)?.to_vec();
        let qualified_name = r.tpm2b("attested.qualifiedName", 2 + MAX_DIGEST)?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer: h.qualified_signer,
            extra_data: h.extra_data,
            clock_info: h.clock_info,
            firmware_version: h.firmware_version,
            certified: CertifyInfo {
                name,
                qualified_name,
            },
        })
    }
}

/// A `TPMT_SIGNATURE` of an asymmetric scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// RSASSA or RSAPSS (`TPMS_SIGNATURE_RSA`).
    Rsa {
        /// `TPM_ALG_RSASSA` or `TPM_ALG_RSAPSS`.
        scheme: u16,
        /// Hash algorithm id.
        hash: u16,
        /// The signature value.
        sig: Vec<u8>,
    },
    /// ECDSA, ECDAA, SM2 or EC-Schnorr (`TPMS_SIGNATURE_ECC`).
    Ecc {
        /// The scheme id.
        scheme: u16,
        /// Hash algorithm id.
        hash: u16,
        /// r.
        r: Vec<u8>,
        /// s.
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parses a `TPMT_SIGNATURE`; HMAC and NULL signatures are rejected.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let at = r.pos();
        let scheme = r.u16("sigAlg")?;
        let sig = match scheme {
            alg::RSASSA | alg::RSAPSS => {
                let hash = r.u16("signature.hash")?;
                let sig = r.tpm2b("signature.sig", MAX_RSA_BYTES)?.to_vec();
                Self::Rsa { scheme, hash, sig }
            }
            alg::ECDSA | alg::ECDAA | alg::SM2 | alg::ECSCHNORR => {
                let hash = r.u16("signature.hash")?;
                let sr = r.tpm2b("signature.signatureR", MAX_ECC_BYTES)?.to_vec();
                let ss = r.tpm2b("signature.signatureS", MAX_ECC_BYTES)?.to_vec();
                Self::Ecc {
                    scheme,
                    hash,
                    r: sr,
                    s: ss,
                }
            }
            other => return Err(r.bad("sigAlg", other.into(), at)),
        };
        r.finish()?;
        Ok(sig)
    }

    /// The signature scheme id.
    pub fn scheme(&self) -> u16 {
        match self {
            Self::Rsa { scheme, .. } | Self::Ecc { scheme, .. } => *scheme,
        }
    }

    /// The hash algorithm id.
    pub fn hash(&self) -> u16 {
        match self {
            Self::Rsa { hash, .. } | Self::Ecc { hash, .. } => *hash,
        }
    }
}

/// `TPMT_SYM_DEF_OBJECT` when not NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymDef {
    /// Cipher (`TPM_ALG_AES`...).
    pub algorithm: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// Mode (`TPM_ALG_CFB`...).
    pub mode: u16,
}

/// A signing or key-exchange scheme with its hash (`TPMT_RSA_SCHEME`, `TPMT_ECC_SCHEME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Scheme id.
    pub scheme: u16,
    /// Hash algorithm id.
    pub hash: u16,
}

/// The public key of a `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA.
    Rsa {
        /// Modulus size.
        key_bits: u16,
        /// Exponent; 0 means 65537.
        exponent: u32,
        /// Modulus, big-endian.
        modulus: Vec<u8>,
    },
    /// ECC.
    Ecc {
        /// `TPM_ECC_CURVE`.
        curve: u16,
        /// KDF scheme, when not NULL.
        kdf: Option<Scheme>,
        /// x coordinate.
        x: Vec<u8>,
        /// y coordinate.
        y: Vec<u8>,
    },
}

/// A parsed `TPMT_PUBLIC` together with its exact wire bytes (which its name hashes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// The marshaled `TPMT_PUBLIC` exactly as received.
    pub bytes: Vec<u8>,
    /// Name algorithm.
    pub name_alg: u16,
    /// `TPMA_OBJECT`.
    pub attributes: u32,
    /// Policy digest.
    pub auth_policy: Vec<u8>,
    /// Symmetric definition for storage keys, `None` when NULL.
    pub symmetric: Option<SymDef>,
    /// Signing or decryption scheme, `None` when NULL.
    pub scheme: Option<Scheme>,
    /// The key.
    pub key: PublicKey,
}

impl Public {
    /// Parses a `TPM2B_PUBLIC` (u16 size, then a `TPMT_PUBLIC` of exactly that size).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes, "TPM2B_PUBLIC");
        let inner = r.tpm2b("size", usize::from(u16::MAX))?;
        r.finish()?;
        Self::parse(inner)
    }

    /// Parses a `TPMT_PUBLIC` of an RSA or ECC key.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let at = r.pos();
        let kind = r.u16("type")?;
        if kind != alg::RSA && kind != alg::ECC {
            return Err(r.bad("type", kind.into(), at));
        }
        let name_alg = r.u16("nameAlg")?;
        let attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b("authPolicy", MAX_DIGEST)?.to_vec();
        let symmetric = read_sym_def(&mut r)?;
        let scheme = read_scheme(&mut r, kind)?;
        let key = if kind == alg::RSA {
            let key_bits = r.u16("parameters.keyBits")?;
            let exponent = r.u32("parameters.exponent")?;
            let modulus = r.tpm2b("unique.rsa", MAX_RSA_BYTES)?.to_vec();
            PublicKey::Rsa {
                key_bits,
                exponent,
                modulus,
            }
        } else {
            let curve = r.u16("parameters.curveID")?;
            let kdf_scheme = r.u16("parameters.kdf.scheme")?;
            let kdf = if kdf_scheme == alg::NULL {
                None
            } else {
                let hash = r.u16("parameters.kdf.hashAlg")?;
                Some(Scheme {
                    scheme: kdf_scheme,
                    hash,
                })
            };
            let x = r.tpm2b("unique.ecc.x", MAX_ECC_BYTES)?.to_vec();
            let y = r.tpm2b("unique.ecc.y", MAX_ECC_BYTES)?.to_vec();
            PublicKey::Ecc { curve, kdf, x, y }
        };
        r.finish()?;
        Ok(Self {
            bytes: bytes.to_vec(),
            name_alg,
            attributes,
            auth_policy,
            symmetric,
            scheme,
            key,
        })
    }

    /// The name algorithm, if it is one this verifier accepts.
    pub fn name_hash(&self) -> Option<HashAlg> {
        HashAlg::from_tpm(self.name_alg)
    }

    /// The object's name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC). `None` for an unaccepted
    /// name algorithm.
    pub fn name(&self) -> Option<Vec<u8>> {
        let h = self.name_hash()?;
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(&h.digest(&[&self.bytes]));
        Some(name)
    }

    /// The qualified name of this object as a child of `parent` (TPM 2.0 Part 1 §16):
    /// QN = nameAlg || H_nameAlg(QN(parent) || name). `None` for an unaccepted name algorithm.
    pub fn qualified_name(&self, parent_qualified_name: &[u8]) -> Option<Vec<u8>> {
        let h = self.name_hash()?;
        let name = self.name()?;
        let mut qn = self.name_alg.to_be_bytes().to_vec();
        qn.extend_from_slice(&h.digest(&[parent_qualified_name, &name]));
        Some(qn)
    }

    /// The qualified name of a primary key of the endorsement hierarchy (an EK), whose parent's
    /// qualified name is the hierarchy handle `TPM_RH_ENDORSEMENT` (0x4000000B).
    pub fn endorsement_primary_qualified_name(&self) -> Option<Vec<u8>> {
        self.qualified_name(&TPM_RH_ENDORSEMENT.to_be_bytes())
    }

    /// The `TPM2B_PUBLIC` encoding (size prefix, then the exact `TPMT_PUBLIC` bytes).
    pub fn to_tpm2b(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.bytes.len() + 2);
        crate::wire::put_tpm2b(&mut out, &self.bytes)?;
        Some(out)
    }
}

fn read_sym_def(r: &mut Reader<'_>) -> Result<Option<SymDef>, ParseError> {
    let algorithm = r.u16("parameters.symmetric.algorithm")?;
    if algorithm == alg::NULL {
        return Ok(None);
    }
    let key_bits = r.u16("parameters.symmetric.keyBits")?;
    let mode = r.u16("parameters.symmetric.mode")?;
    Ok(Some(SymDef {
        algorithm,
        key_bits,
        mode,
    }))
}

fn read_scheme(r: &mut Reader<'_>, kind: u16) -> Result<Option<Scheme>, ParseError> {
    let at = r.pos();
    let scheme = r.u16("parameters.scheme")?;
    if scheme == alg::NULL {
        return Ok(None);
    }
    let allowed: &[u16] = if kind == alg::RSA {
        &[alg::RSASSA, alg::RSAPSS, alg::RSAES, alg::OAEP]
    } else {
        &[alg::ECDSA, alg::ECDAA, alg::SM2, alg::ECSCHNORR, alg::ECDH]
    };
    if !allowed.contains(&scheme) {
        return Err(r.bad("parameters.scheme", scheme.into(), at));
    }
    // RSAES has no details; every other scheme carries a hash (ECDAA also a count).
    if scheme == alg::RSAES {
        return Ok(Some(Scheme {
            scheme,
            hash: alg::NULL,
        }));
    }
    let hash = r.u16("parameters.scheme.hashAlg")?;
    if scheme == alg::ECDAA {
        r.u16("parameters.scheme.count")?;
    }
    Ok(Some(Scheme { scheme, hash }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sha2::Digest as _;

    /// A TPMT_PUBLIC of an RSA-2048 restricted signing key, as swtpm produced it.
    pub(crate) fn rsa_ak_tpmt(modulus: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&alg::RSA.to_be_bytes());
        b.extend_from_slice(&alg::SHA256.to_be_bytes());
        b.extend_from_slice(&attr::AK.to_be_bytes());
        b.extend_from_slice(&[0, 0]); // authPolicy
        b.extend_from_slice(&alg::NULL.to_be_bytes()); // symmetric
        b.extend_from_slice(&alg::RSASSA.to_be_bytes());
        b.extend_from_slice(&alg::SHA256.to_be_bytes());
        b.extend_from_slice(&2048u16.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&(modulus.len() as u16).to_be_bytes());
        b.extend_from_slice(modulus);
        b
    }

    pub(crate) fn quote_attest(
        name: &[u8],
        extra: &[u8],
        sel: &PcrSelection,
        digest: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
        b.extend_from_slice(&TPM_ST_ATTEST_QUOTE.to_be_bytes());
        crate::wire::put_tpm2b(&mut b, name).unwrap();
        crate::wire::put_tpm2b(&mut b, extra).unwrap();
        b.extend_from_slice(&1234u64.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.push(1);
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&sel.to_bytes());
        crate::wire::put_tpm2b(&mut b, digest).unwrap();
        b
    }

    fn sha256_0_7() -> PcrSelection {
        PcrSelection {
            banks: vec![PcrBankSelection {
                hash: alg::SHA256,
                select: vec![0xff, 0, 0],
            }],
        }
    }

    #[test]
    fn attest_round_trips_and_rejects_bad_magic_type_and_trailing_bytes() {
        let bytes = quote_attest(&[0, 0xb, 1, 2], &[9; 32], &sha256_0_7(), &[5; 32]);
        let a = Attest::parse(&bytes).unwrap();
        assert_eq!(a.extra_data, vec![9; 32]);
        assert_eq!(a.clock_info.reset_count, 3);
        assert!(a.clock_info.safe);
        assert_eq!(a.quote.pcr_select.pairs().len(), 8);

        let mut bad = bytes.clone();
        bad[0] = 0;
        assert!(Attest::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut bad = bytes.clone();
        bad[5] = 0x17; // 0x8017: certify
        assert!(Attest::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("type"));
        let mut bad = bytes.clone();
        bad.push(0);
        assert!(matches!(
            Attest::parse(&bad),
            Err(ParseError::Trailing { count: 1, .. })
        ));
        for cut in 0..bytes.len() {
            assert!(
                Attest::parse(&bytes[..cut]).is_err(),
                "prefix {cut} accepted"
            );
        }
    }

    #[test]
    fn clock_safe_must_be_yes_or_no() {
        let mut bytes = quote_attest(&[1], &[], &sha256_0_7(), &[]);
        // magic 4 + type 2 + name 3 + extra 2 + clock 8 + counts 8 = offset 27.
        bytes[27] = 2;
        assert!(Attest::parse(&bytes)
            .unwrap_err()
            .to_string()
            .contains("clockInfo.safe"));
    }

    #[test]
    fn pcr_selection_limits_are_enforced() {
        let mut sel = sha256_0_7().to_bytes();
        sel[6] = 5; // sizeofSelect
        assert!(PcrSelection::parse(&sel).is_err());
        let many = [0u8, 0, 0, 17];
        assert!(PcrSelection::parse(&many)
            .unwrap_err()
            .to_string()
            .contains("count"));
        let sel = PcrSelection {
            banks: vec![PcrBankSelection {
                hash: alg::SHA256,
                select: vec![0b1000_0001, 0, 0b10],
            }],
        };
        assert_eq!(sel.banks[0].indices(), vec![0, 7, 17]);
        assert_eq!(PcrSelection::parse(&sel.to_bytes()).unwrap(), sel);
    }

    #[test]
    fn signatures_parse_and_hmac_is_rejected() {
        let mut b = alg::RSASSA.to_be_bytes().to_vec();
        b.extend_from_slice(&alg::SHA256.to_be_bytes());
        b.extend_from_slice(&[0, 2, 0xaa, 0xbb]);
        assert_eq!(
            Signature::parse(&b).unwrap(),
            Signature::Rsa {
                scheme: alg::RSASSA,
                hash: alg::SHA256,
                sig: vec![0xaa, 0xbb]
            }
        );
        let mut e = alg::ECDSA.to_be_bytes().to_vec();
        e.extend_from_slice(&alg::SHA256.to_be_bytes());
        e.extend_from_slice(&[0, 1, 1, 0, 1, 2]);
        assert!(matches!(
            Signature::parse(&e).unwrap(),
            Signature::Ecc { .. }
        ));
        let hmac = [0u8, 5, 0, 0xb];
        assert!(Signature::parse(&hmac)
            .unwrap_err()
            .to_string()
            .contains("sigAlg"));
        b.push(0);
        assert!(Signature::parse(&b).is_err());
    }

    #[test]
    fn public_parses_and_names_itself() {
        let tpmt = rsa_ak_tpmt(&[0xc5; 256]);
        let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&tpmt);
        let p = Public::parse_tpm2b(&tpm2b).unwrap();
        assert_eq!(p.attributes, attr::AK);
        assert_eq!(
            p.scheme,
            Some(Scheme {
                scheme: alg::RSASSA,
                hash: alg::SHA256
            })
        );
        let name = p.name().unwrap();
        assert_eq!(&name[..2], &[0, 0xb]);
        assert_eq!(&name[2..], Sha256::digest(&tpmt).as_slice());
        assert_eq!(p.to_tpm2b().unwrap(), tpm2b);
        // Size prefix disagreeing with the content.
        let mut short = tpm2b.clone();
        short[1] -= 1;
        assert!(Public::parse_tpm2b(&short).is_err());
        let mut keyed_hash = tpmt.clone();
        keyed_hash[1] = 8;
        assert!(Public::parse(&keyed_hash)
            .unwrap_err()
            .to_string()
            .contains("type"));
    }

    #[test]
    fn kdfa_style_hmac_matches_rfc4231_case_2() {
        let mac = HashAlg::Sha256.hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

/// Stable-Rust robustness test of the parsers (the cargo-fuzz targets in `tpm/fuzz` need
/// nightly): seeded random inputs and random mutations of valid structures never panic, and
/// whatever parses round-trips.
#[cfg(test)]
mod robustness {
    use super::*;

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] = rng.next() as u8;
                }
                1 if !v.is_empty() => v.truncate(rng.below(v.len())),
                2 => v.push(rng.next() as u8),
                _ if !v.is_empty() => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                _ => {}
            }
        }
        v
    }

    #[test]
    fn parsers_never_panic_on_random_or_mutated_input() {
        let sel = crate::report::parse_pcr_spec("sha256:0-7").unwrap();
        let attest = tests::quote_attest(&[0, 0xb, 1], &[2; 32], &sel, &[3; 32]);
        let public = {
            let t = tests::rsa_ak_tpmt(&[0xc5; 256]);
            let mut b = (t.len() as u16).to_be_bytes().to_vec();
            b.extend_from_slice(&t);
            b
        };
        let sig = [
            &alg::ECDSA.to_be_bytes()[..],
            &alg::SHA256.to_be_bytes(),
            &[0, 1, 1, 0, 1, 2],
        ]
        .concat();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let random: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            for input in [
                random,
                mutate(&mut rng, &attest),
                mutate(&mut rng, &public),
                mutate(&mut rng, &sig),
            ] {
                if let Ok(a) = Attest::parse(&input) {
                    assert_eq!(
                        PcrSelection::parse(&a.quote.pcr_select.to_bytes()).unwrap(),
                        a.quote.pcr_select
                    );
                }
                if let Ok(p) = Public::parse_tpm2b(&input) {
                    assert_eq!(p.to_tpm2b().unwrap(), input);
                    let _ = p.name();
                }
                let _ = Signature::parse(&input);
                let _ = PcrSelection::parse(&input);
            }
        }
    }
}
