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
