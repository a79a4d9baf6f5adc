//! The offline verifier of `fog-receipts-v1` bundles (normative text: `RECEIPTS.md` §6): every
//! check of the checklist, each with a stable id and its own reason, collected into a
//! [`ReceiptVerdict`]. Pure: the enrolled AKs come in as a [`VerifierState`]; nothing is
//! recorded.
//!
//! - `chain`: the checks of one job's receipt chain (start, gaps, order, forks, end,
//!   counters).
//! - `quotes`: the checks of the AK's receipt quotes (signatures, binding, clock, rollback).
//!
//! Costs: the bundle, the TPM keys and the certification are parsed once per bundle; each
//! receipt costs one strict JSON parse of its body and one ECDSA P-256 verification (`ring`);
//! each quote one signature verification by the AK.

mod chain;
mod quotes;
#[cfg(test)]
mod tests;

use chain::Chain;
use quotes::{check_quote_binding, check_quote_signatures, check_rollback, check_tpm_clock};

use std::time::SystemTime;

use serde::Serialize;
use x509_cert::Certificate;

use crate::receipt::{
    signing_digest, ReceiptBody, ReceiptBundle, ReceiptUsage, BUNDLE_FORMAT, RECEIPT_FORMAT,
    RECEIPT_SIGNING_CONTEXT,
};
use crate::store::VerifierState;
use crate::structures::{alg, Attest, Public, Signature};
use crate::verify::{check_ak_attributes, ek_chain_outcome, Check, VerifyOptions};

/// What the verifier trusts.
#[derive(Debug, Clone, Default)]
pub struct ReceiptVerifyOptions {
    /// Trust anchors for EK certificates.
    pub trust_anchors: Vec<Certificate>,
    /// Whether an EK certified by a software-TPM CA (swtpm) is accepted.
    pub allow_software_tpm: bool,
}

/// The result of verifying one bundle.
#[derive(Debug, Clone, Serialize)]
pub struct ReceiptVerdict {
    /// Whether every check passed.
    pub passed: bool,
    /// The bundle's host id (empty when the bundle is malformed).
    pub host_id: String,
    /// The bundle's job id (empty when the bundle is malformed).
    pub job_id: String,
    /// How many receipts the bundle holds.
    pub receipts: usize,
    /// Every check in checklist order ([`CHECKS`]); only [`MALFORMED`] for a malformed bundle.
    pub checks: Vec<Check>,
    /// The usage of the last receipt, when every check passed.
    pub usage: Option<ReceiptUsage>,
}

impl ReceiptVerdict {
    /// The ids of the failed checks, in checklist order.
    pub fn failed(&self) -> Vec<&'static str> {
        crate::verify::failed_ids(&self.checks)
    }

    /// The check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        crate::verify::check_by_id(&self.checks, id)
    }
}

/// The id of the one check a malformed bundle's verdict has.
pub const MALFORMED: &str = "bundle_json";

/// Every check id, in verdict order, with what it establishes (`RECEIPTS.md` §6).
pub const CHECKS: &[(&str, &str)] = &[
    (
        MALFORMED,
        "bundle and receipt bodies are well-formed fog-receipts-v1 / fog-receipt-v1 JSON",
    ),
    (
        "ek_chain",
        "EK certificate chains to a trust anchor and certifies the bundle's EK",
    ),
    (
        "ak_enrolled",
        "AK is enrolled under this EK for the bundle's host, which every receipt names",
    ),
    ("ak_attributes", "AK is a restricted signing key"),
    (
        "identity_certified",
        "the AK certified the identity key (TPM2_Certify) and it has the identity attributes",
    ),
    (
        "receipt_key",
        "every receipt names the certified identity key",
    ),
    (
        "receipt_signature",
        "every receipt is signed by the certified identity key",
    ),
    (
        "job_binding",
        "every receipt is of the bundle's job (id, labels, image, spec)",
    ),
    (
        "chain_start",
        "the first receipt starts the chain (seq 0, prev GENESIS, kind start)",
    ),
    ("chain_gap", "no seq between 0 and the highest is missing"),
    ("chain_order", "receipts are in seq order"),
    (
        "chain_fork",
        "no seq is used twice and each receipt's prev is its predecessor's digest",
    ),
    (
        "chain_end",
        "nothing follows an end receipt; termination exactly on end",
    ),
    (
        "counters_monotonic",
        "counters never decrease and intervals are contiguous",
    ),
    (
        "quote_signature",
        "every quote is a TPM quote signed by the AK",
    ),
    (
        "quote_binding",
        "quotes commit to their seq, prev and receipts; each receipt is quoted once, in order",
    ),
    (
        "tpm_clock",
        "the TPM clock strictly increases along the bundle's quotes",
    ),
    (
        "rollback",
        "no two quotes contradict each other (same seq, or a later clock at a lower seq)",
    ),
];

type Outcome = Result<Option<String>, String>;

/// Verifies a bundle at the current time (certificate validity); see [`verify_bundle_at`].
pub fn verify_bundle(
    bundle_json: &[u8],
    opts: &ReceiptVerifyOptions,
    state: &VerifierState,
) -> ReceiptVerdict {
    verify_bundle_at(bundle_json, opts, state, SystemTime::now())
}

/// Verifies the bundle text `bundle_json` against the trust anchors and policy of `opts` and the
/// enrolled AKs of `state`, with certificates checked as of `now`. Never panics.
pub fn verify_bundle_at(
    bundle_json: &[u8],
    opts: &ReceiptVerifyOptions,
    state: &VerifierState,
    now: SystemTime,
) -> ReceiptVerdict {
    let parsed = match Parsed::from_json(bundle_json) {
        Ok(p) => p,
        Err(reason) => {
            return ReceiptVerdict {
                passed: false,
                host_id: String::new(),
                job_id: String::new(),
                receipts: 0,
                checks: vec![Check {
                    id: MALFORMED,
                    what: CHECKS[0].1,
                    passed: false,
                    reason: Some(reason),
                }],
                usage: None,
            }
        }
    };
    let b = &parsed.bundle;
    let ak = Public::parse_tpm2b(&b.tpm.ak_pub).map_err(|e| format!("AK public: {e}"));
    let key =
        Public::parse_tpm2b(&b.identity.key_pub).map_err(|e| format!("identity key public: {e}"));
    let quotes = parsed.parse_quotes();
    let chain = Chain::new(&parsed);

    let results: Vec<Outcome> = vec![
        Ok(None),
        check_ek(b, opts, now),
        check_enrolled(&parsed, ak.as_ref(), state),
        ak.as_ref()
            .map_err(Clone::clone)
            .and_then(check_ak_attributes),
        ak.as_ref()
            .map_err(Clone::clone)
            .and_then(|ak| {
                crate::identity::check_certification(
                    &b.identity.key_pub,
                    &b.identity.certify_attest,
                    &b.identity.certify_signature,
                    ak,
                )
            })
            .map(|_| None),
        check_receipt_key(&parsed, key.as_ref()),
        check_receipt_signatures(&parsed, key.as_ref()),
        check_job_binding(&parsed),
        chain.start(),
        chain.gap(),
        chain.order(),
        chain.fork(),
        chain.end(),
        chain.counters(),
        check_quote_signatures(&parsed, ak.as_ref(), &quotes),
        check_quote_binding(&parsed, &chain, &quotes),
        check_tpm_clock(&quotes),
        check_rollback(&parsed, &quotes),
    ];
    let checks: Vec<Check> = CHECKS
        .iter()
        .zip(results)
        .map(|(&(id, what), r)| {
            let (passed, reason) = match r {
                Ok(note) => (true, note),
                Err(reason) => (false, Some(reason)),
            };
            Check {
                id,
                what,
                passed,
                reason,
            }
        })
        .collect();
    let passed = checks.iter().all(|c| c.passed);
    ReceiptVerdict {
        passed,
        host_id: b.host_id.clone(),
        job_id: b.job_id.clone(),
        receipts: b.receipts.len(),
        checks,
        usage: passed
            .then(|| parsed.bodies.last().map(|body| body.usage.clone()))
            .flatten(),
    }
}

/// A well-formed bundle with its receipt bodies parsed and its hex fields decoded.
struct Parsed {
    bundle: ReceiptBundle,
    bodies: Vec<ReceiptBody>,
    /// SHA-256 of each receipt's body bytes.
    digests: Vec<[u8; 32]>,
    /// Each quote's `prev` and receipt digests, decoded.
    quote_links: Vec<([u8; 32], Vec<[u8; 32]>)>,
}

/// Decodes 64 lowercase hex digits.
fn digest_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !is_lower_hex(text) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Parsed {
    fn from_json(text: &[u8]) -> Result<Self, String> {
        let bundle = ReceiptBundle::from_json(text)?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(format!(
                "format is \"{}\", expected \"{BUNDLE_FORMAT}\"",
                bundle.format.escape_debug()
            ));
        }
        let mut bodies = Vec::with_capacity(bundle.receipts.len());
        let mut digests = Vec::with_capacity(bundle.receipts.len());
        for (i, r) in bundle.receipts.iter().enumerate() {
            let body =
                ReceiptBody::from_bytes(&r.body).map_err(|e| format!("receipt {i} body: {e}"))?;
            if body.format != RECEIPT_FORMAT {
                return Err(format!(
                    "receipt {i}: format is \"{}\", expected \"{RECEIPT_FORMAT}\"",
                    body.format.escape_debug()
                ));
            }
            if digest_hex(&body.prev).is_none() {
                return Err(format!("receipt {i}: prev is not 64 lowercase hex digits"));
            }
            if body.key.is_empty() || body.key.len() % 2 != 0 || !is_lower_hex(&body.key) {
                return Err(format!("receipt {i}: key is not lowercase hex"));
            }
            bodies.push(body);
            digests.push(r.digest());
        }
        let mut quote_links = Vec::with_capacity(bundle.quotes.len());
        for (j, q) in bundle.quotes.iter().enumerate() {
            let prev = digest_hex(&q.prev)
                .ok_or_else(|| format!("quote {j}: prev is not 64 lowercase hex digits"))?;
            let receipts = q
                .receipts
                .iter()
                .map(|d| digest_hex(d))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    format!("quote {j}: a receipt digest is not 64 lowercase hex digits")
                })?;
            quote_links.push((prev, receipts));
        }
        Ok(Self {
            bundle,
            bodies,
            digests,
            quote_links,
        })
    }

    /// Each quote's attest, parsed (or why not).
    fn parse_quotes(&self) -> Vec<Result<Attest, String>> {
        self.bundle
            .quotes
            .iter()
            .enumerate()
            .map(|(j, q)| Attest::parse(&q.attest).map_err(|e| format!("quote {j}: {e}")))
            .collect()
    }
}

fn check_ek(b: &ReceiptBundle, opts: &ReceiptVerifyOptions, now: SystemTime) -> Outcome {
    let der = b
        .tpm
        .ek_cert
        .as_deref()
        .ok_or("the bundle has no EK certificate: the EK cannot be tied to a manufacturer")?;
    let verify_opts = VerifyOptions {
        nonce: Vec::new(),
        pcrs: crate::structures::PcrSelection::default(),
        trust_anchors: opts.trust_anchors.clone(),
        allow_software_tpm: opts.allow_software_tpm,
        now,
        max_age: None,
    };
    let note = ek_chain_outcome(der, &b.tpm.ek_chain, &verify_opts)?;
    let ek = Public::parse_tpm2b(&b.tpm.ek_pub).map_err(|e| format!("EK public: {e}"))?;
    let cert = crate::certs::parse_der(crate::certs::trim_der_padding(der), "EK certificate")
        .map_err(|e| e.to_string())?;
    crate::certs::check_ek_matches(&cert, &ek).map_err(|e| e.to_string())?;
    Ok(note)
}

fn check_enrolled(p: &Parsed, ak: Result<&Public, &String>, state: &VerifierState) -> Outcome {
    let b = &p.bundle;
    let name = ak
        .map_err(Clone::clone)?
        .name()
        .map(hex::encode)
        .ok_or("AK name unavailable (unsupported nameAlg)")?;
    let enrolled = state
        .enrolled
        .get(&name)
        .ok_or_else(|| format!("AK {name} is not enrolled in the verifier state"))?;
    if enrolled.ak_pub != hex::encode(&b.tpm.ak_pub) {
        return Err(format!("AK {name} was enrolled with another public area"));
    }
    if enrolled.ek_pub != hex::encode(&b.tpm.ek_pub) {
        return Err(format!("AK {name} was enrolled under a different EK"));
    }
    if enrolled.host_id.is_empty() {
        return Err("the AK's enrollment has no host id recorded: enroll it again".into());
    }
    if enrolled.host_id != b.host_id {
        return Err(format!(
            "host_id \"{}\" is not the host \"{}\" the AK was enrolled for",
            b.host_id.escape_debug(),
            enrolled.host_id.escape_debug()
        ));
    }
    if let Some((i, body)) = p
        .bodies
        .iter()
        .enumerate()
        .find(|(_, body)| body.host_id != b.host_id)
    {
        return Err(format!(
            "receipt {i} names host \"{}\", the bundle \"{}\"",
            body.host_id.escape_debug(),
            b.host_id.escape_debug()
        ));
    }
    Ok(None)
}

fn check_receipt_key(p: &Parsed, key: Result<&Public, &String>) -> Outcome {
    let name = key
        .map_err(Clone::clone)?
        .name()
        .map(hex::encode)
        .ok_or("identity key nameAlg unsupported")?;
    match p.bodies.iter().position(|body| body.key != name) {
        None => Ok(None),
        Some(i) => Err(format!(
            "receipt {i} names key {}, not the certified identity key {name}",
            p.bodies[i].key
        )),
    }
}

fn check_receipt_signatures(p: &Parsed, key: Result<&Public, &String>) -> Outcome {
    let key = key.map_err(Clone::clone)?;
    let mut message = Vec::new();
    for (i, r) in p.bundle.receipts.iter().enumerate() {
        let sig =
            Signature::parse(&r.signature).map_err(|e| format!("receipt {i}: signature: {e}"))?;
        if sig.scheme() != alg::ECDSA || sig.hash() != alg::SHA256 {
            return Err(format!("receipt {i}: the signature is not ECDSA-SHA256"));
        }
        message.clear();
        message.extend_from_slice(RECEIPT_SIGNING_CONTEXT);
        message.extend_from_slice(&r.body);
        crate::sigverify::verify(&sig, key, &message).map_err(|_| {
            format!(
                "receipt {i} (seq {}): the signature over SHA-256(\"fog-receipt-v1\\0\" || body) = {} does not verify with the identity key",
                p.bodies[i].seq,
                hex::encode(signing_digest(&r.body))
            )
        })?;
    }
    Ok(None)
}

fn check_job_binding(p: &Parsed) -> Outcome {
    let Some(first) = p.bodies.first() else {
        return Ok(None);
    };
    for (i, body) in p.bodies.iter().enumerate() {
        if body.job_id != p.bundle.job_id {
            return Err(format!(
                "receipt {i} is of job \"{}\", the bundle of job \"{}\"",
                body.job_id.escape_debug(),
                p.bundle.job_id.escape_debug()
            ));
        }
        for (what, same) in [
            ("labels", body.labels == first.labels),
            ("image_digest", body.image_digest == first.image_digest),
            ("spec_sha256", body.spec_sha256 == first.spec_sha256),
        ] {
            if !same {
                return Err(format!("receipt {i}: {what} differs from receipt 0's"));
            }
        }
    }
    Ok(None)
}
