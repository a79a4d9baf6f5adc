//! Software `TPM2_MakeCredential` (TPM 2.0 Part 1 §24 "Credential Protection", Part 3 §12.6),
//! so an auditor can challenge an AK without owning a TPM.
//!
//! ```text
//! seed            random, |H| bytes; H = the EK's nameAlg
//! encSecret       RSA EK: RSA-OAEP(H, label "IDENTITY\0")(seed)
//!                 ECC EK: ephemeral key e; Z = x(e * EK); seed = KDFe(H, Z, "IDENTITY\0", x(e), x(EK))
//!                         encSecret = TPMS_ECC_POINT(e)
//! symKey          KDFa(H, seed, "STORAGE", name, "", EK symmetric key bits)
//! encIdentity     AES-CFB(symKey, IV = 0)(TPM2B_DIGEST(credential))
//! hmacKey         KDFa(H, seed, "INTEGRITY", "", "", |H| * 8)
//! outerHMAC       HMAC-H(hmacKey, encIdentity || name)
//! credentialBlob  TPM2B_DIGEST(outerHMAC) || encIdentity      (TPM2B_ID_OBJECT contents)
//! ```

use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use rand_core::{OsRng, RngCore};
use thiserror::Error;

use crate::structures::{alg, curve, HashAlg, Public, PublicKey};
use crate::wire::put_tpm2b;

/// The label used for both OAEP and KDFe when protecting a credential.
const IDENTITY_LABEL: &[u8] = b"IDENTITY\0";

/// Why a credential could not be made for an EK.
#[derive(Debug, Error)]
pub enum CredentialError {
    /// The EK is not a restricted decryption (storage) key.
    #[error("the EK is not a restricted decryption key (objectAttributes {0:#010x})")]
    NotStorageKey(u32),
    /// The EK's name algorithm is not SHA-256/384/512.
    #[error("the EK's name algorithm {0:#06x} is not supported")]
    NameAlg(u16),
    /// The EK's symmetric definition is not AES-128/256-CFB.
    #[error("the EK's symmetric definition is not AES-128-CFB or AES-256-CFB")]
    Symmetric,
    /// The credential is longer than the EK's name digest.
    #[error("the credential is {len} bytes; at most {max} fit")]
    CredentialTooLong {
        /// Its length.
        len: usize,
        /// The limit (digest size of the EK's nameAlg).
        max: usize,
    },
    /// The EK's RSA key could not be used.
    #[error("the EK's RSA public key is unusable: {0}")]
    Rsa(String),
    /// The EK's ECC key could not be used.
    #[error("the EK's ECC public key is unusable (curve {0:#06x}, or a point not on the curve)")]
    Ecc(u16),
}

/// The two buffers `TPM2_ActivateCredential` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// Contents of the `TPM2B_ID_OBJECT`: `TPM2B_DIGEST(outerHMAC) || encIdentity`.
    pub credential_blob: Vec<u8>,
    /// Contents of the `TPM2B_ENCRYPTED_SECRET`.
    pub encrypted_secret: Vec<u8>,
}

/// KDFa (SP800-108 counter mode with HMAC-H), as TPM 2.0 Part 1 §11.4.10.2 defines it.
///
/// `label` gets its terminating zero byte appended here when it lacks one.
pub fn kdfa(
    h: HashAlg,
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let mut label_z = label.as_bytes().to_vec();
    if label_z.last() != Some(&0) {
        label_z.push(0);
    }
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + h.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        out.extend_from_slice(&h.hmac(
            key,
            &[
                &counter.to_be_bytes(),
                &label_z,
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        ));
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    mask_high_bits(&mut out, bits);
    out
}

/// KDFe (SP800-56A concatenation KDF), as TPM 2.0 Part 1 §11.4.10.3 defines it.
pub fn kdfe(
    h: HashAlg,
    z: &[u8],
    label: &[u8],
    party_u: &[u8],
    party_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + h.size());
    let mut counter: u32 = 1;
    while out.len() < bytes {
        out.extend_from_slice(&h.digest(&[&counter.to_be_bytes(), z, label, party_u, party_v]));
        counter = counter.wrapping_add(1);
    }
    out.truncate(bytes);
    mask_high_bits(&mut out, bits);
    out
}

fn mask_high_bits(out: &mut [u8], bits: u32) {
    let extra = (8 - bits % 8) % 8;
    if let Some(first) = out.first_mut() {
        *first &= 0xffu8 >> extra;
    }
}

/// Runs `TPM2_MakeCredential(ek, credential, object_name)` in software with a fresh random seed.
pub fn make_credential(
    ek: &Public,
    object_name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    use crate::structures::attr;
    if ek.attributes & (attr::RESTRICTED | attr::DECRYPT) != (attr::RESTRICTED | attr::DECRYPT) {
        return Err(CredentialError::NotStorageKey(ek.attributes));
    }
    let h = ek
        .name_hash()
        .ok_or(CredentialError::NameAlg(ek.name_alg))?;
    let sym_bits = match ek.symmetric {
        Some(s)
            if s.algorithm == alg::AES
                && s.mode == alg::CFB
                && (s.key_bits == 128 || s.key_bits == 256) =>
        {
            u32::from(s.key_bits)
        }
        _ => return Err(CredentialError::Symmetric),
    };
    if credential.len() > h.size() {
        return Err(CredentialError::CredentialTooLong {
            len: credential.len(),
            max: h.size(),
        });
    }
    let (seed, encrypted_secret) = match &ek.key {
        PublicKey::Rsa {
            exponent, modulus, ..
        } => rsa_seed(h, *exponent, modulus)?,
        PublicKey::Ecc { curve, x, y, .. } => ecc_seed(h, *curve, x, y)?,
    };
    Ok(MadeCredential {
        credential_blob: protect(h, sym_bits, &seed, object_name, credential),
        encrypted_secret,
    })
}

/// The symmetric and integrity protection of the credential under `seed`.
fn protect(h: HashAlg, sym_bits: u32, seed: &[u8], name: &[u8], credential: &[u8]) -> Vec<u8> {
    let sym_key = kdfa(h, seed, "STORAGE", name, &[], sym_bits);
    let mut enc_identity = Vec::with_capacity(credential.len() + 2);
    // The credential is at most 64 bytes (checked by the caller), so it fits a TPM2B.
    let _ = put_tpm2b(&mut enc_identity, credential);
    let iv = [0u8; 16];
    match sym_bits {
        128 => {
            if let Ok(c) = cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &iv) {
                c.encrypt(&mut enc_identity);
            }
        }
        _ => {
            if let Ok(c) = cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(&sym_key, &iv) {
                c.encrypt(&mut enc_identity);
            }
        }
    }
    let hmac_key = kdfa(h, seed, "INTEGRITY", &[], &[], (h.size() * 8) as u32);
    let outer_hmac = h.hmac(&hmac_key, &[&enc_identity, name]);
    let mut blob = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    let _ = put_tpm2b(&mut blob, &outer_hmac);
    blob.extend_from_slice(&enc_identity);
    blob
}

fn rsa_seed(
    h: HashAlg,
    exponent: u32,
    modulus: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    use rsa::{BigUint, Oaep, RsaPublicKey};
    let e = if exponent == 0 { 65537 } else { exponent };
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(e))
        .map_err(|e| CredentialError::Rsa(e.to_string()))?;
    let mut seed = vec![0u8; h.size()];
    OsRng.fill_bytes(&mut seed);
    let label = "IDENTITY\0";
    let padding = match h {
        HashAlg::Sha256 => Oaep::new_with_label::<sha2::Sha256, _>(label),
        HashAlg::Sha384 => Oaep::new_with_label::<sha2::Sha384, _>(label),
        HashAlg::Sha512 => Oaep::new_with_label::<sha2::Sha512, _>(label),
    };
    let enc = key
        .encrypt(&mut OsRng, padding, &seed)
        .map_err(|e| CredentialError::Rsa(e.to_string()))?;
    Ok((seed, enc))
}

fn ecc_seed(
    h: HashAlg,
    curve_id: u16,
    x: &[u8],
    y: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let bad = || CredentialError::Ecc(curve_id);
    let (z, ex, ey) = match curve_id {
        curve::NIST_P256 => ecdh::<p256::NistP256>(x, y, 32).ok_or_else(bad)?,
        curve::NIST_P384 => ecdh::<p384::NistP384>(x, y, 48).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    let seed = kdfe(h, &z, IDENTITY_LABEL, &ex, x, (h.size() * 8) as u32);
    let mut point = Vec::with_capacity(4 + ex.len() + ey.len());
    put_tpm2b(&mut point, &ex).ok_or_else(bad)?;
    put_tpm2b(&mut point, &ey).ok_or_else(bad)?;
    Ok((seed, point))
}

/// ECDH with a fresh ephemeral key against the point (x, y): returns (Z.x, ephemeral x, ephemeral y).
fn ecdh<C>(x: &[u8], y: &[u8], field_len: usize) -> Option<(Vec<u8>, Vec<u8>, Vec<u8>)>
where
    C: elliptic_curve::CurveArithmetic,
    elliptic_curve::FieldBytesSize<C>: elliptic_curve::sec1::ModulusSize,
    elliptic_curve::AffinePoint<C>:
        elliptic_curve::sec1::FromEncodedPoint<C> + elliptic_curve::sec1::ToEncodedPoint<C>,
{
    if x.len() > field_len || y.len() > field_len {
        return None;
    }
    let mut sec1 = vec![0x04];
    sec1.extend(std::iter::repeat_n(0, field_len - x.len()));
    sec1.extend_from_slice(x);
    sec1.extend(std::iter::repeat_n(0, field_len - y.len()));
    sec1.extend_from_slice(y);
    let peer = elliptic_curve::PublicKey::<C>::from_sec1_bytes(&sec1).ok()?;
    let eph = elliptic_curve::ecdh::EphemeralSecret::<C>::random(&mut OsRng);
    let shared = eph.diffie_hellman(&peer);
    let z = shared.raw_secret_bytes().to_vec();
    let point = elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&eph.public_key(), false);
    Some((z, point.x()?.to_vec(), point.y()?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::{attr, Scheme, SymDef};
    use rsa::traits::PublicKeyParts;

    fn rsa_ek(key: &rsa::RsaPublicKey) -> Public {
        Public {
            bytes: vec![],
            name_alg: alg::SHA256,
            attributes: attr::FIXED_TPM | attr::FIXED_PARENT | attr::RESTRICTED | attr::DECRYPT,
            auth_policy: vec![],
            symmetric: Some(SymDef {
                algorithm: alg::AES,
                key_bits: 128,
                mode: alg::CFB,
            }),
            scheme: None::<Scheme>,
            key: PublicKey::Rsa {
                key_bits: 2048,
                exponent: 0,
                modulus: key.n().to_bytes_be(),
            },
        }
    }

    /// ActivateCredential in software with the EK's private key (what the TPM does).
    fn activate(
        ek_priv: &rsa::RsaPrivateKey,
        name: &[u8],
        made: &MadeCredential,
    ) -> Option<Vec<u8>> {
        let seed = ek_priv
            .decrypt(
                rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0"),
                &made.encrypted_secret,
            )
            .ok()?;
        let h = HashAlg::Sha256;
        let hmac_len = usize::from(u16::from_be_bytes([
            made.credential_blob[0],
            made.credential_blob[1],
        ]));
        let (hmac, enc) = made.credential_blob[2..].split_at(hmac_len);
        let key = kdfa(h, &seed, "INTEGRITY", &[], &[], 256);
        if h.hmac(&key, &[enc, name]) != hmac {
            return None;
        }
        let sym = kdfa(h, &seed, "STORAGE", name, &[], 128);
        let mut plain = enc.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new_from_slices(&sym, &[0; 16])
            .unwrap()
            .decrypt(&mut plain);
        Some(plain[2..].to_vec())
    }

    #[test]
    fn rsa_credential_activates_only_with_the_right_name() {
        let ek_priv = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let ek = rsa_ek(&ek_priv.to_public_key());
        let name = [0, 0xb, 1, 2, 3];
        let made = make_credential(&ek, &name, &[7; 32]).unwrap();
        assert_eq!(activate(&ek_priv, &name, &made), Some(vec![7; 32]));
        assert_eq!(activate(&ek_priv, &[0, 0xb, 9], &made), None);
    }

    #[test]
    fn non_storage_eks_and_long_credentials_are_refused() {
        let ek_priv = rsa::RsaPrivateKey::new(&mut OsRng, 1024).unwrap();
        let mut ek = rsa_ek(&ek_priv.to_public_key());
        assert!(matches!(
            make_credential(&ek, &[0], &[0; 33]),
            Err(CredentialError::CredentialTooLong { len: 33, max: 32 })
        ));
        ek.attributes &= !attr::DECRYPT;
        assert!(matches!(
            make_credential(&ek, &[0], &[0; 32]),
            Err(CredentialError::NotStorageKey(_))
        ));
    }

    #[test]
    fn kdfa_counter_and_bits_encoding() {
        // Two HMAC blocks, truncated to 40 bytes; first block = HMAC(k, 1 || "L\0" || u || v || 320).
        let out = kdfa(HashAlg::Sha256, b"k", "L", b"u", b"v", 320);
        assert_eq!(out.len(), 40);
        let first = HashAlg::Sha256.hmac(
            b"k",
            &[
                &1u32.to_be_bytes(),
                b"L\0",
                b"u",
                b"v",
                &320u32.to_be_bytes(),
            ],
        );
        assert_eq!(&out[..32], &first[..]);
        let odd = kdfa(HashAlg::Sha256, b"k", "L", b"", b"", 12);
        assert_eq!(odd.len(), 2);
        assert_eq!(odd[0] & 0xf0, 0);
    }

    #[test]
    fn kdfe_matches_its_definition() {
        let out = kdfe(HashAlg::Sha256, b"z", b"IDENTITY\0", b"u", b"v", 256);
        assert_eq!(
            out,
            HashAlg::Sha256.digest(&[&1u32.to_be_bytes(), b"z", b"IDENTITY\0", b"u", b"v"])
        );
    }

    #[test]
    fn ecc_point_off_curve_is_refused() {
        let mut ek = rsa_ek(
            &rsa::RsaPrivateKey::new(&mut OsRng, 1024)
                .unwrap()
                .to_public_key(),
        );
        ek.key = PublicKey::Ecc {
            curve: curve::NIST_P256,
            kdf: None,
            x: vec![1; 32],
            y: vec![2; 32],
        };
        assert!(matches!(
            make_credential(&ek, &[0], &[0; 32]),
            Err(CredentialError::Ecc(3))
        ));
    }
}
