//! EK certificate chain validation against an auditor's trust anchors (X.509, pure Rust).
//!
//! A path is built from the EK certificate through the report's chain certificates to one of the
//! anchors, matching issuer to subject names and checking each signature (RSA PKCS#1 v1.5 or
//! ECDSA with SHA-256/384/512), validity at the given time, `cA` and `keyCertSign` on issuers, and
//! the EK key usage (keyEncipherment for RSA EKs, keyAgreement for ECC EKs). Critical extensions
//! are not rejected: TCG EK certificates carry a critical subjectAltName with TPM identity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::Digest as _;
use thiserror::Error;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::Certificate;

use crate::structures::{Public, PublicKey};

/// Longest path accepted (EK certificate plus intermediates).
const MAX_DEPTH: usize = 8;

/// Why an EK certificate was not accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CertError {
    /// DER or PEM that does not parse.
    #[error("{what} does not parse as an X.509 certificate: {reason}")]
    Parse {
        /// Which certificate.
        what: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// No issuer found among the chain and the anchors.
    #[error("no trusted issuer for \"{subject}\" (issuer \"{issuer}\"): the EK certificate does not chain to a trust anchor")]
    Untrusted {
        /// Subject of the last certificate reached.
        subject: String,
        /// Its issuer.
        issuer: String,
    },
    /// A certificate is outside its validity period.
    #[error("certificate \"{0}\" is not valid at the verification time")]
    Expired(String),
    /// An issuer may not issue certificates.
    #[error("issuer \"{0}\" is not a CA (basicConstraints cA or keyUsage keyCertSign missing)")]
    NotCa(String),
    /// The EK certificate lacks the key usage of an EK.
    #[error("EK certificate key usage lacks {0}")]
    EkKeyUsage(&'static str),
    /// The path is too long.
    #[error("certificate path longer than {MAX_DEPTH}")]
    TooDeep,
    /// The EK public in the report is not the certificate's key.
    #[error("the EK public key differs from the EK certificate's key")]
    KeyMismatch,
    /// A signature algorithm or key type this verifier does not handle.
    #[error("unsupported {0}")]
    Unsupported(String),
}

/// The outcome of a successful chain validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainOk {
    /// Subject of the anchor the path ended at.
    pub anchor: String,
    /// Whether the path passes through a software-TPM CA (a subject naming swtpm).
    pub software_tpm: bool,
}

/// Parses every certificate of a PEM bundle (trust anchors).
pub fn parse_pem_bundle(pem: &[u8]) -> Result<Vec<Certificate>, CertError> {
    let certs = Certificate::load_pem_chain(pem).map_err(|e| CertError::Parse {
        what: "trust anchor bundle".into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(CertError::Parse {
            what: "trust anchor bundle".into(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Parses one DER certificate; `what` names it in errors.
pub fn parse_der(der: &[u8], what: &str) -> Result<Certificate, CertError> {
    Certificate::from_der(der).map_err(|e| CertError::Parse {
        what: what.into(),
        reason: e.to_string(),
    })
}

/// Validates `ek_cert` through `chain` to one of `anchors` at time `now`.
pub fn verify_chain(
    ek_cert: &Certificate,
    chain: &[Certificate],
    anchors: &[Certificate],
    now: SystemTime,
) -> Result<ChainOk, CertError> {
    check_validity(ek_cert, now)?;
    check_ek_key_usage(ek_cert)?;
    let mut software_tpm = names_swtpm(ek_cert);
    let mut current = ek_cert;
    for _ in 0..MAX_DEPTH {
        if let Some(anchor) = anchors.iter().find(|a| issued_by(current, a)) {
            check_validity(anchor, now)?;
            check_ca(anchor)?;
            software_tpm |= names_swtpm(anchor);
            return Ok(ChainOk {
                anchor: anchor.tbs_certificate.subject.to_string(),
                software_tpm,
            });
        }
        let Some(next) = chain.iter().find(|c| issued_by(current, c)) else {
            return Err(CertError::Untrusted {
                subject: current.tbs_certificate.subject.to_string(),
                issuer: current.tbs_certificate.issuer.to_string(),
            });
        };
        check_validity(next, now)?;
        check_ca(next)?;
        software_tpm |= names_swtpm(next);
        current = next;
    }
    Err(CertError::TooDeep)
}

/// Whether `issuer` has `child`'s issuer name and a key that verifies `child`'s signature.
fn issued_by(child: &Certificate, issuer: &Certificate) -> bool {
    child.tbs_certificate.issuer == issuer.tbs_certificate.subject
        && verify_signature(child, issuer).is_ok()
}

fn verify_signature(child: &Certificate, issuer: &Certificate) -> Result<(), CertError> {
    use const_oid::db::rfc5912 as oids;
    let unsupported = |what: &str| CertError::Unsupported(what.to_string());
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|_| unsupported("TBS encoding"))?;
    let sig = child.signature.raw_bytes();
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| unsupported("issuer key encoding"))?;
    let oid = child.signature_algorithm.oid;
    let (hash, is_rsa): (Vec<u8>, bool) = if oid == oids::SHA_256_WITH_RSA_ENCRYPTION {
        (sha2::Sha256::digest(&tbs).to_vec(), true)
    } else if oid == oids::SHA_384_WITH_RSA_ENCRYPTION {
        (sha2::Sha384::digest(&tbs).to_vec(), true)
    } else if oid == oids::SHA_512_WITH_RSA_ENCRYPTION {
        (sha2::Sha512::digest(&tbs).to_vec(), true)
    } else if oid == oids::ECDSA_WITH_SHA_256 {
        (sha2::Sha256::digest(&tbs).to_vec(), false)
    } else if oid == oids::ECDSA_WITH_SHA_384 {
        (sha2::Sha384::digest(&tbs).to_vec(), false)
    } else if oid == oids::ECDSA_WITH_SHA_512 {
        (sha2::Sha512::digest(&tbs).to_vec(), false)
    } else {
        return Err(CertError::Unsupported(format!(
            "certificate signature algorithm {oid}"
        )));
    };
    let bad = || CertError::Unsupported("signature".into());
    if is_rsa {
        use rsa::pkcs8::DecodePublicKey;
        let key = rsa::RsaPublicKey::from_public_key_der(&spki).map_err(|_| bad())?;
        let scheme = match hash.len() {
            32 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            48 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
            _ => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        };
        key.verify(scheme, &hash, sig).map_err(|_| bad())
    } else {
        use ecdsa::signature::hazmat::PrehashVerifier;
        use p256::pkcs8::DecodePublicKey;
        if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) {
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|_| bad())?;
            key.verify_prehash(&hash, &s).map_err(|_| bad())
        } else if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki) {
            let s = p384::ecdsa::Signature::from_der(sig).map_err(|_| bad())?;
            key.verify_prehash(&hash, &s).map_err(|_| bad())
        } else {
            Err(unsupported("issuer key type"))
        }
    }
}

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), CertError> {
    let v = &cert.tbs_certificate.validity;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    if now < v.not_before.to_unix_duration() || now > v.not_after.to_unix_duration() {
        return Err(CertError::Expired(cert.tbs_certificate.subject.to_string()));
    }
    Ok(())
}

fn check_ca(cert: &Certificate) -> Result<(), CertError> {
    let not_ca = || CertError::NotCa(cert.tbs_certificate.subject.to_string());
    let bc = cert
        .tbs_certificate
        .get::<BasicConstraints>()
        .map_err(|_| not_ca())?;
    if !matches!(bc, Some((_, BasicConstraints { ca: true, .. }))) {
        return Err(not_ca());
    }
    if let Some((_, ku)) = cert
        .tbs_certificate
        .get::<KeyUsage>()
        .map_err(|_| not_ca())?
    {
        if !ku.0.contains(KeyUsages::KeyCertSign) {
            return Err(not_ca());
        }
    }
    Ok(())
}

fn check_ek_key_usage(cert: &Certificate) -> Result<(), CertError> {
    let is_rsa = cert.tbs_certificate.subject_public_key_info.algorithm.oid
        == const_oid::db::rfc5912::RSA_ENCRYPTION;
    let (flag, name) = if is_rsa {
        (KeyUsages::KeyEncipherment, "keyEncipherment")
    } else {
        (KeyUsages::KeyAgreement, "keyAgreement")
    };
    match cert.tbs_certificate.get::<KeyUsage>() {
        Ok(Some((_, ku))) if ku.0.contains(flag) => Ok(()),
        _ => Err(CertError::EkKeyUsage(name)),
    }
}

fn names_swtpm(cert: &Certificate) -> bool {
    let lower = |n: &x509_cert::name::Name| n.to_string().to_ascii_lowercase();
    lower(&cert.tbs_certificate.subject).contains("swtpm")
        || lower(&cert.tbs_certificate.issuer).contains("swtpm")
}

/// Checks that the EK certificate certifies exactly the key of `ek` (the report's EK public).
pub fn check_ek_matches(cert: &Certificate, ek: &Public) -> Result<(), CertError> {
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| CertError::Unsupported("EK certificate key encoding".into()))?;
    let same = match &ek.key {
        PublicKey::Rsa {
            exponent, modulus, ..
        } => {
            use rsa::pkcs8::DecodePublicKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPublicKey::from_public_key_der(&spki)
                .map_err(|_| CertError::KeyMismatch)?;
            let e = if *exponent == 0 { 65537 } else { *exponent };
            key.n().to_bytes_be() == strip_zeros(modulus) && key.e() == &rsa::BigUint::from(e)
        }
        PublicKey::Ecc { x, y, .. } => {
            use p256::pkcs8::DecodePublicKey;
            let point = if let Ok(k) = p256::PublicKey::from_public_key_der(&spki) {
                elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k, false)
                    .as_bytes()
                    .to_vec()
            } else if let Ok(k) = p384::PublicKey::from_public_key_der(&spki) {
                elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&k, false)
                    .as_bytes()
                    .to_vec()
            } else {
                return Err(CertError::KeyMismatch);
            };
            let half = point.len().saturating_sub(1) / 2;
            point.len() == 1 + 2 * half
                && strip_zeros(&point[1..1 + half]) == strip_zeros(x)
                && strip_zeros(&point[1 + half..]) == strip_zeros(y)
        }
    };
    if same {
        Ok(())
    } else {
        Err(CertError::KeyMismatch)
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// Reads an EK certificate from NV contents: tolerates padding after the DER (some TPMs pad the
/// index) by taking exactly the outer SEQUENCE's length.
pub fn trim_der_padding(nv: &[u8]) -> &[u8] {
    // SEQUENCE tag 0x30, then a definite length (short or long form).
    if nv.len() < 2 || nv[0] != 0x30 {
        return nv;
    }
    let (header, len) = match nv[1] {
        l if l < 0x80 => (2usize, usize::from(l)),
        0x81 if nv.len() >= 3 => (3, usize::from(nv[2])),
        0x82 if nv.len() >= 4 => (4, usize::from(u16::from_be_bytes([nv[2], nv[3]]))),
        0x83 if nv.len() >= 5 => (
            5,
            (usize::from(nv[2]) << 16) | (usize::from(nv[3]) << 8) | usize::from(nv[4]),
        ),
        _ => return nv,
    };
    nv.get(..header + len).unwrap_or(nv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_after_der_is_trimmed_and_garbage_is_kept() {
        let mut der = vec![0x30, 0x82, 0x00, 0x03, 1, 2, 3];
        der.extend_from_slice(&[0xff; 10]);
        assert_eq!(trim_der_padding(&der), &[0x30, 0x82, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(trim_der_padding(&[0x30, 0x05, 1]), &[0x30, 0x05, 1]);
        assert_eq!(trim_der_padding(&[0xff, 0xff]), &[0xff, 0xff]);
    }

    #[test]
    fn garbage_certificates_are_parse_errors() {
        assert!(matches!(
            parse_der(&[0x30, 0x00], "EK certificate"),
            Err(CertError::Parse { .. })
        ));
        assert!(parse_pem_bundle(b"not pem").is_err());
    }
}
