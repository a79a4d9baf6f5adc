//! `fog-identity-request-v1` (normative text: `IDENTITY.md`): a PKCS#10 request signed by the
//! TPM-resident identity key, with the enrolled AK's `TPM2_Certify` of that key over the CA's
//! nonce and the request. [`verify_request`] is what a CA (or the market) runs before issuing
//! the agent's client certificate for the key.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use x509_cert::der::{Decode as _, Encode as _};

use crate::identity::{check_certification, sec1_point, IDENTITY_CERTIFY_CONTEXT};
use crate::receipt::CertifiedKey;
use crate::report::b64;
use crate::store::VerifierState;
use crate::structures::{Public, PublicKey};
use crate::verify::Check;

/// `format` of an identity request.
pub const IDENTITY_REQUEST_FORMAT: &str = "fog-identity-request-v1";

/// An identity request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRequest {
    /// Always [`IDENTITY_REQUEST_FORMAT`].
    pub format: String,
    /// The host id the AK was enrolled for.
    pub host_id: String,
    /// The CA's nonce.
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// PKCS#10 `CertificationRequest` (DER) signed by the identity key.
    #[serde(with = "b64")]
    pub csr: Vec<u8>,
    /// The AK's `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub ak_pub: Vec<u8>,
    /// The identity key and the AK's certification of it over [`request_qualifying_data`].
    pub identity: CertifiedKey,
}

impl IdentityRequest {
    /// Parses a request, held to [`crate::strict_json`] first.
    pub fn from_json(text: &[u8]) -> Result<Self, String> {
        crate::strict_json::check(text)?;
        serde_json::from_slice(text).map_err(|e| e.to_string())
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The certification's qualifying data: SHA-256("fog-identity-v1\0" || nonce || csr).
pub fn request_qualifying_data(nonce: &[u8], csr_der: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(IDENTITY_CERTIFY_CONTEXT);
    h.update(nonce);
    h.update(csr_der);
    h.finalize().into()
}

/// The result of verifying an identity request.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityVerdict {
    /// Whether every check passed.
    pub ok: bool,
    /// The request's host id.
    pub host_id: String,
    /// The identity key's name (hex), when its public area parsed.
    pub key_name: Option<String>,
    /// The identity key as SEC1 uncompressed point (hex), when it parsed.
    #[serde(skip)]
    pub key_point: Option<Vec<u8>>,
    /// Every check in order.
    pub checks: Vec<Check>,
}

impl IdentityVerdict {
    /// The ids of failed checks.
    pub fn failed(&self) -> Vec<&'static str> {
        crate::verify::failed_ids(&self.checks)
    }
}

/// Every check id, in verdict order, with what it establishes.
pub const IDENTITY_CHECKS: &[(&str, &str)] = &[
    (
        "request_json",
        "request is well-formed JSON of the fog-identity-request-v1 shape",
    ),
    ("ak_enrolled", "AK is enrolled, for the request's host id"),
    (
        "identity_certified",
        "the AK's TPM2_Certify names the key, which has the identity key's attributes",
    ),
    ("nonce_expected", "nonce equals the CA's"),
    (
        "certify_binding",
        "the certification's extraData binds the nonce and the CSR",
    ),
    (
        "csr",
        "the CSR is for the certified key and its signature verifies with it",
    ),
];

fn what(id: &str) -> &'static str {
    IDENTITY_CHECKS
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("", |(_, w)| w)
}

fn check(id: &'static str, outcome: Result<(), String>) -> Check {
    Check {
        id,
        what: what(id),
        passed: outcome.is_ok(),
        reason: outcome.err(),
    }
}

/// Verifies an identity request against the CA's `expected_nonce` and the enrolled AKs of
/// `state`; never panics, whatever the input.
pub fn verify_request(
    text: &[u8],
    expected_nonce: &[u8],
    state: &VerifierState,
) -> IdentityVerdict {
    let request = match IdentityRequest::from_json(text).and_then(|r| {
        if r.format == IDENTITY_REQUEST_FORMAT {
            Ok(r)
        } else {
            Err(format!(
                "format \"{}\" is not {IDENTITY_REQUEST_FORMAT}",
                r.format.escape_debug()
            ))
        }
    }) {
        Ok(r) => r,
        Err(reason) => {
            return IdentityVerdict {
                ok: false,
                host_id: String::new(),
                key_name: None,
                key_point: None,
                checks: vec![check("request_json", Err(reason))],
            }
        }
    };
    let key = Public::parse_tpm2b(&request.identity.key_pub).ok();
    let ak = Public::parse_tpm2b(&request.ak_pub).map_err(|e| format!("ak_pub: {e}"));
    let mut checks = vec![check("request_json", Ok(()))];
    checks.push(check(
        "ak_enrolled",
        check_enrolled(&request, ak.as_ref(), state),
    ));
    let certification = ak.clone().and_then(|ak| {
        check_certification(
            &request.identity.key_pub,
            &request.identity.certify_attest,
            &request.identity.certify_signature,
            &ak,
        )
    });
    checks.push(check(
        "identity_certified",
        certification.as_ref().map(|_| ()).map_err(Clone::clone),
    ));
    checks.push(check(
        "nonce_expected",
        check_nonce(&request.nonce, expected_nonce),
    ));
    checks.push(check(
        "certify_binding",
        match &certification {
            Ok((_, attest))
                if attest.extra_data == request_qualifying_data(&request.nonce, &request.csr) =>
            {
                Ok(())
            }
            Ok(_) => Err("extraData is not SHA-256(\"fog-identity-v1\\0\" || nonce || csr)".into()),
            Err(_) => Err("no valid certification to read extraData from".into()),
        },
    ));
    checks.push(check(
        "csr",
        key.as_ref()
            .ok_or_else(|| "the key's public area does not parse".to_owned())
            .and_then(|key| check_csr(&request.csr, key)),
    ));
    IdentityVerdict {
        ok: checks.iter().all(|c| c.passed),
        host_id: request.host_id,
        key_name: key.as_ref().and_then(Public::name).map(hex::encode),
        key_point: key.as_ref().and_then(sec1_point),
        checks,
    }
}

fn check_enrolled(
    request: &IdentityRequest,
    ak: Result<&Public, &String>,
    state: &VerifierState,
) -> Result<(), String> {
    let ak = ak.map_err(Clone::clone)?;
    let name = ak
        .name()
        .map(hex::encode)
        .ok_or("the AK's nameAlg is not supported")?;
    let enrolled = state
        .enrolled
        .get(&name)
        .ok_or_else(|| format!("AK {name} is not enrolled"))?;
    if enrolled.host_id != request.host_id {
        return Err(format!(
            "host_id \"{}\" is not the host \"{}\" the AK was enrolled for",
            request.host_id.escape_debug(),
            enrolled.host_id.escape_debug()
        ));
    }
    Ok(())
}

fn check_nonce(got: &[u8], expected: &[u8]) -> Result<(), String> {
    use subtle::ConstantTimeEq;
    if got.len() == expected.len() && bool::from(got.ct_eq(expected)) {
        Ok(())
    } else {
        Err(format!(
            "nonce {} is not the expected {}",
            hex::encode(got),
            hex::encode(expected)
        ))
    }
}

/// OID ecdsa-with-SHA256.
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";

/// The CSR parses, carries exactly the key's point, and its ecdsa-with-SHA256 signature over
/// `certificationRequestInfo` verifies with that key.
fn check_csr(der: &[u8], key: &Public) -> Result<(), String> {
    let csr = x509_cert::request::CertReq::from_der(der).map_err(|e| format!("CSR: {e}"))?;
    let point = sec1_point(key).ok_or("the key is not an ECC key")?;
    let spki_point = csr.info.public_key.subject_public_key.raw_bytes();
    if spki_point != point.as_slice() {
        return Err("the CSR's public key is not the certified key".into());
    }
    if !matches!(key.key, PublicKey::Ecc { .. }) {
        return Err("the key is not an ECC key".into());
    }
    if csr.algorithm.oid.to_string() != ECDSA_WITH_SHA256 {
        return Err(format!(
            "CSR signature algorithm {} is not ecdsa-with-SHA256",
            csr.algorithm.oid
        ));
    }
    let info = csr.info.to_der().map_err(|e| format!("CSR info: {e}"))?;
    let sig = csr
        .signature
        .as_bytes()
        .ok_or("the CSR signature has unused bits")?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(&info, sig)
        .map_err(|_| "the CSR's signature does not verify with the certified key".to_owned())
}
