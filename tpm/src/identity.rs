//! Binding an identity key to an enrolled AK (normative text: `IDENTITY.md`): the checks of a
//! `TPM2_Certify` by the AK over the key, shared by `fog-identity-request-v1` (a CA issuing the
//! agent's client certificate) and the receipt bundles (whose receipts the key signs).

use crate::structures::{alg, attr, curve, CertifyAttest, Public, PublicKey, Signature};

/// Prefix of an identity request's certify qualifying data.
pub const IDENTITY_CERTIFY_CONTEXT: &[u8] = b"fog-identity-v1\0";

/// Checks that `certify_attest`/`certify_signature` are the AK's `TPM2_Certify` of the key whose
/// `TPM2B_PUBLIC` is `key_pub`, and that the key is an identity key: exactly [`attr::IDENTITY`]
/// (fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign; not restricted, not
/// decrypt), ECC P-256, scheme ECDSA-SHA256, nameAlg SHA-256. Returns the parsed key and the
/// certification (whose `extra_data` the caller checks against its own qualifying data).
pub fn check_certification(
    key_pub: &[u8],
    certify_attest: &[u8],
    certify_signature: &[u8],
    ak: &Public,
) -> Result<(Public, CertifyAttest), String> {
    let key = Public::parse_tpm2b(key_pub).map_err(|e| format!("key_pub: {e}"))?;
    check_identity_attributes(&key)?;
    let attest =
        CertifyAttest::parse(certify_attest).map_err(|e| format!("certify attest: {e}"))?;
    let sig = Signature::parse(certify_signature).map_err(|e| format!("certify signature: {e}"))?;
    crate::sigverify::verify(&sig, ak, certify_attest)
        .map_err(|what| format!("the certification does not verify with the AK ({what})"))?;
    let name = key.name().ok_or("the key's nameAlg is not supported")?;
    if attest.certified.name != name {
        return Err(format!(
            "the certification names {}, not the key {}",
            hex::encode(&attest.certified.name),
            hex::encode(&name)
        ));
    }
    Ok((key, attest))
}

/// The SEC1 uncompressed point (0x04 || x || y) of an ECC key; `None` for RSA or coordinates
/// longer than the curve's field.
pub fn sec1_point(key: &Public) -> Option<Vec<u8>> {
    let PublicKey::Ecc { curve: c, x, y, .. } = &key.key else {
        return None;
    };
    let field: usize = match *c {
        curve::NIST_P256 => 32,
        curve::NIST_P384 => 48,
        _ => return None,
    };
    let mut point = vec![0x04];
    for coordinate in [x, y] {
        let pad = field.checked_sub(coordinate.len())?;
        point.extend(std::iter::repeat_n(0, pad));
        point.extend_from_slice(coordinate);
    }
    Some(point)
}

/// A `TPMT_SIGNATURE` of ECDSA-SHA256 over P-256 as the DER `ECDSA-Sig-Value` X.509 and TLS
/// carry.
pub fn ecdsa_signature_der(tpmt_signature: &[u8]) -> Result<Vec<u8>, String> {
    let sig = Signature::parse(tpmt_signature).map_err(|e| e.to_string())?;
    let Signature::Ecc {
        scheme: alg::ECDSA,
        hash: alg::SHA256,
        r,
        s,
    } = sig
    else {
        return Err("not an ECDSA-SHA256 signature".into());
    };
    let field = |v: &[u8]| -> Result<p256::FieldBytes, String> {
        let v = &v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..];
        let pad = 32usize
            .checked_sub(v.len())
            .ok_or("r or s longer than 32 bytes")?;
        let mut out = p256::FieldBytes::default();
        out[pad..].copy_from_slice(v);
        Ok(out)
    };
    let sig = p256::ecdsa::Signature::from_scalars(field(&r)?, field(&s)?)
        .map_err(|e| format!("r or s out of range: {e}"))?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// The key is an identity key (attributes, curve, scheme, nameAlg).
pub fn check_identity_attributes(key: &Public) -> Result<(), String> {
    if key.attributes != attr::IDENTITY {
        let mut why = Vec::new();
        for (bit, name) in [
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (attr::USER_WITH_AUTH, "userWithAuth"),
            (attr::SIGN, "sign"),
        ] {
            if key.attributes & bit == 0 {
                why.push(format!("lacks {name}"));
            }
        }
        let extra = key.attributes & !attr::IDENTITY;
        for (bit, name) in [(attr::RESTRICTED, "restricted"), (attr::DECRYPT, "decrypt")] {
            if extra & bit != 0 {
                why.push(format!("has {name}"));
            }
        }
        if extra & !(attr::RESTRICTED | attr::DECRYPT) != 0 {
            why.push(format!(
                "has extra attributes {:#010x}",
                extra & !(attr::RESTRICTED | attr::DECRYPT)
            ));
        }
        return Err(format!(
            "identity key objectAttributes {:#010x}: {}",
            key.attributes,
            why.join(", ")
        ));
    }
    if key.name_alg != alg::SHA256 {
        return Err(format!(
            "identity key nameAlg is {:#06x}, expected SHA-256",
            key.name_alg
        ));
    }
    match (&key.key, key.scheme) {
        (PublicKey::Ecc { curve: c, .. }, Some(s))
            if *c == curve::NIST_P256 && s.scheme == alg::ECDSA && s.hash == alg::SHA256 =>
        {
            Ok(())
        }
        _ => Err("identity key is not ECC P-256 with scheme ECDSA-SHA256".into()),
    }
}
