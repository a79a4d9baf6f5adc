//! Enrollment: binding an AK to a certified EK by credential activation.
//!
//! 1. The agent sends an [`EnrollRequest`] (EK public, EK certificate and chain, AK public).
//! 2. The auditor ([`create_challenge`]) checks the EK chain and the AK attributes, runs
//!    `MakeCredential(EK, AK name, secret)` in software and keeps the secret in its state.
//! 3. The agent's TPM activates the credential (possible only if the AK and the EK live in the
//!    same TPM) and returns [`EnrollProof`] = HMAC-SHA256(secret, "fog-enroll-v1" || host_id ||
//!    enroll_nonce).
//! 4. The auditor ([`finish`]) compares in constant time; the challenge is single use.

use std::time::SystemTime;

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::credential::{make_credential, CredentialError};
use crate::report::b64;
use crate::store::{unix_now, EnrolledAk, PendingEnrollment, Store, StoreError};
use crate::structures::{HashAlg, Public};
use crate::verify::{check_ak_attributes, ek_chain_outcome, VerifyOptions};

/// `format` of an enrollment request.
pub const REQUEST_FORMAT: &str = "fog-enroll-request-v1";
/// `format` of an enrollment challenge.
pub const CHALLENGE_FORMAT: &str = "fog-enroll-challenge-v1";
/// `format` of an enrollment proof.
pub const PROOF_FORMAT: &str = "fog-enroll-proof-v1";
/// Domain separator of the proof HMAC.
pub const PROOF_DOMAIN: &[u8] = b"fog-enroll-v1";
/// Size of the credential secret and of the enroll nonce.
pub const SECRET_LEN: usize = 32;

/// Why an enrollment step failed.
#[derive(Debug, Error)]
pub enum EnrollError {
    /// A file is not the expected JSON.
    #[error("{what} is malformed: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// A file breaks the JSON rules of [`crate::strict_json`].
    #[error("{what} is malformed: {reason}")]
    Strict {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Wrong `format` field.
    #[error("{what} has format \"{found}\", expected \"{expected}\"")]
    Format {
        /// Which document.
        what: &'static str,
        /// Found.
        found: String,
        /// Expected.
        expected: &'static str,
    },
    /// A TPM structure in the request does not parse.
    #[error("{what}: {source}")]
    Structure {
        /// Which structure.
        what: &'static str,
        /// The parse error.
        source: crate::wire::ParseError,
    },
    /// The request has no EK certificate.
    #[error("the request has no EK certificate: the EK cannot be tied to a TPM manufacturer")]
    NoEkCertificate,
    /// The EK certificate was rejected.
    #[error("EK certificate rejected: {0}")]
    EkCertificate(String),
    /// The AK does not have the required attributes.
    #[error("AK rejected: {0}")]
    AkAttributes(String),
    /// MakeCredential failed.
    #[error("cannot make a credential for this EK: {0}")]
    Credential(#[from] CredentialError),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No pending challenge for the proof's nonce.
    #[error("no pending enrollment challenge for nonce {0} (unknown, or already used)")]
    UnknownChallenge(String),
    /// The proof is wrong.
    #[error(
        "enrollment proof does not match: the AK is not in the TPM that holds the certified EK"
    )]
    ProofMismatch,
}

/// What the agent sends to enroll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Always [`REQUEST_FORMAT`].
    pub format: String,
    /// The host id.
    pub host_id: String,
    /// EK `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub ek_pub: Vec<u8>,
    /// EK certificate (DER) or null.
    #[serde(with = "b64::opt")]
    pub ek_cert: Option<Vec<u8>>,
    /// Chain certificates (DER).
    #[serde(with = "b64::list")]
    pub ek_chain: Vec<Vec<u8>>,
    /// AK `TPM2B_PUBLIC`.
    #[serde(with = "b64")]
    pub ak_pub: Vec<u8>,
}

/// What the auditor sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollChallenge {
    /// Always [`CHALLENGE_FORMAT`].
    pub format: String,
    /// The host id of the request.
    pub host_id: String,
    /// 32 random bytes identifying this challenge.
    #[serde(with = "b64")]
    pub enroll_nonce: Vec<u8>,
    /// `TPM2B_ID_OBJECT` contents for ActivateCredential.
    #[serde(with = "b64")]
    pub credential_blob: Vec<u8>,
    /// `TPM2B_ENCRYPTED_SECRET` contents for ActivateCredential.
    #[serde(with = "b64")]
    pub encrypted_secret: Vec<u8>,
}

/// What the agent returns after activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollProof {
    /// Always [`PROOF_FORMAT`].
    pub format: String,
    /// The host id.
    pub host_id: String,
    /// The challenge's nonce.
    #[serde(with = "b64")]
    pub enroll_nonce: Vec<u8>,
    /// HMAC-SHA256(secret, "fog-enroll-v1" || host_id || enroll_nonce).
    #[serde(with = "b64")]
    pub proof: Vec<u8>,
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, EnrollError> {
    crate::strict_json::check(bytes).map_err(|reason| EnrollError::Strict { what, reason })?;
    serde_json::from_slice(bytes).map_err(|source| EnrollError::Json { what, source })
}

fn check_format(
    found: &str,
    expected: &'static str,
    what: &'static str,
) -> Result<(), EnrollError> {
    if found == expected {
        Ok(())
    } else {
        Err(EnrollError::Format {
            what,
            found: found.to_string(),
            expected,
        })
    }
}

impl EnrollRequest {
    /// Parses and checks the format.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnrollError> {
        let r: Self = parse_json(bytes, "enrollment request")?;
        check_format(&r.format, REQUEST_FORMAT, "enrollment request")?;
        Ok(r)
    }
}

impl EnrollChallenge {
    /// Parses and checks the format.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnrollError> {
        let c: Self = parse_json(bytes, "enrollment challenge")?;
        check_format(&c.format, CHALLENGE_FORMAT, "enrollment challenge")?;
        Ok(c)
    }
}

impl EnrollProof {
    /// Parses and checks the format.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EnrollError> {
        let p: Self = parse_json(bytes, "enrollment proof")?;
        check_format(&p.format, PROOF_FORMAT, "enrollment proof")?;
        Ok(p)
    }
}

/// proof = HMAC-SHA256(secret, "fog-enroll-v1" || host_id (UTF-8) || enroll_nonce).
pub fn proof_mac(secret: &[u8], host_id: &str, enroll_nonce: &[u8]) -> Vec<u8> {
    HashAlg::Sha256.hmac(secret, &[PROOF_DOMAIN, host_id.as_bytes(), enroll_nonce])
}

/// Builds the agent's proof from the activated secret.
pub fn make_proof(challenge: &EnrollChallenge, secret: &[u8]) -> EnrollProof {
    EnrollProof {
        format: PROOF_FORMAT.into(),
        host_id: challenge.host_id.clone(),
        enroll_nonce: challenge.enroll_nonce.clone(),
        proof: proof_mac(secret, &challenge.host_id, &challenge.enroll_nonce),
    }
}

/// Auditor: checks a request and issues a challenge, remembering its secret in `store`.
///
/// `opts` supplies the trust anchors, `allow_software_tpm` and the time; its nonce and PCR
/// fields are unused here.
pub fn create_challenge(
    store: &Store,
    req: &EnrollRequest,
    opts: &VerifyOptions,
) -> Result<EnrollChallenge, EnrollError> {
    let ek = Public::parse_tpm2b(&req.ek_pub).map_err(|source| EnrollError::Structure {
        what: "EK public",
        source,
    })?;
    let ak = Public::parse_tpm2b(&req.ak_pub).map_err(|source| EnrollError::Structure {
        what: "AK public",
        source,
    })?;
    let cert = req.ek_cert.as_deref().ok_or(EnrollError::NoEkCertificate)?;
    let note = ek_chain_outcome(cert, &req.ek_chain, opts).map_err(EnrollError::EkCertificate)?;
    let leaf = crate::certs::parse_der(crate::certs::trim_der_padding(cert), "EK certificate")
        .map_err(|e| EnrollError::EkCertificate(e.to_string()))?;
    crate::certs::check_ek_matches(&leaf, &ek)
        .map_err(|e| EnrollError::EkCertificate(e.to_string()))?;
    check_ak_attributes(&ak).map_err(EnrollError::AkAttributes)?;
    let ak_name = ak
        .name()
        .ok_or_else(|| EnrollError::AkAttributes("AK name algorithm unsupported".into()))?;

    let mut secret = [0u8; SECRET_LEN];
    OsRng.fill_bytes(&mut secret);
    let mut enroll_nonce = [0u8; SECRET_LEN];
    OsRng.fill_bytes(&mut enroll_nonce);
    let made = make_credential(&ek, &ak_name, &secret)?;

    let mut state = store.load()?;
    state.pending.insert(
        hex::encode(enroll_nonce),
        PendingEnrollment {
            host_id: req.host_id.clone(),
            secret: hex::encode(secret),
            ak_pub: hex::encode(&req.ak_pub),
            ek_pub: hex::encode(&req.ek_pub),
            software_tpm: note.is_some_and(|n| n.contains("software TPM")),
            issued_at: unix_now(opts.now),
        },
    );
    store.save(&state)?;
    Ok(EnrollChallenge {
        format: CHALLENGE_FORMAT.into(),
        host_id: req.host_id.clone(),
        enroll_nonce: enroll_nonce.to_vec(),
        credential_blob: made.credential_blob,
        encrypted_secret: made.encrypted_secret,
    })
}

/// Auditor: accepts or rejects a proof. The challenge is consumed either way.
pub fn finish(
    store: &Store,
    proof: &EnrollProof,
    now: SystemTime,
) -> Result<EnrolledAk, EnrollError> {
    let key = hex::encode(&proof.enroll_nonce);
    let mut state = store.load()?;
    let pending = state
        .pending
        .remove(&key)
        .ok_or_else(|| EnrollError::UnknownChallenge(key.clone()))?;
    store.save(&state)?;
    let secret = hex::decode(&pending.secret).map_err(|_| EnrollError::ProofMismatch)?;
    let expected = proof_mac(&secret, &pending.host_id, &proof.enroll_nonce);
    if proof.host_id != pending.host_id || !bool::from(expected.ct_eq(&proof.proof)) {
        return Err(EnrollError::ProofMismatch);
    }
    let ak_pub = hex::decode(&pending.ak_pub).map_err(|_| EnrollError::ProofMismatch)?;
    let ak = Public::parse_tpm2b(&ak_pub).map_err(|source| EnrollError::Structure {
        what: "AK public",
        source,
    })?;
    let name = ak
        .name()
        .ok_or_else(|| EnrollError::AkAttributes("AK name algorithm unsupported".into()))?;
    let enrolled = EnrolledAk {
        host_id: pending.host_id,
        ak_pub: pending.ak_pub,
        ek_pub: pending.ek_pub,
        software_tpm: pending.software_tpm,
        enrolled_at: unix_now(now),
    };
    state.enrolled.insert(hex::encode(name), enrolled.clone());
    store.save(&state)?;
    Ok(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_is_hmac_of_domain_host_and_nonce() {
        let p = proof_mac(b"k", "host", b"n");
        assert_eq!(p, HashAlg::Sha256.hmac(b"k", &[b"fog-enroll-v1host", b"n"]));
    }

    #[test]
    fn unknown_and_reused_challenges_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut state = crate::store::VerifierState::default();
        state.pending.insert(
            hex::encode([1u8; 32]),
            PendingEnrollment {
                host_id: "h".into(),
                secret: hex::encode([2u8; 32]),
                ak_pub: String::new(),
                ek_pub: String::new(),
                software_tpm: false,
                issued_at: 0,
            },
        );
        store.save(&state).unwrap();
        let wrong = EnrollProof {
            format: PROOF_FORMAT.into(),
            host_id: "h".into(),
            enroll_nonce: vec![1; 32],
            proof: vec![0; 32],
        };
        assert!(matches!(
            finish(&store, &wrong, SystemTime::now()),
            Err(EnrollError::ProofMismatch)
        ));
        // Single use: the right proof now finds no challenge.
        let right = EnrollProof {
            proof: proof_mac(&[2; 32], "h", &[1; 32]),
            ..wrong
        };
        assert!(matches!(
            finish(&store, &right, SystemTime::now()),
            Err(EnrollError::UnknownChallenge(_))
        ));
    }
}
