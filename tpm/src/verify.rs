//! The `fog-attest-v1` verifier: every check of the auditor's checklist, each with its own
//! reason, collected into a [`Verdict`]. Pure: history (enrollment, nonce use, last clock) comes
//! in as [`History`]; [`crate::store`] reads and updates it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use x509_cert::Certificate;

use crate::certs;
use crate::report::{
    format_pcr_selection, qualifying_data, Payload, Report, PAYLOAD_FORMAT, REPORT_FORMAT,
};
use crate::structures::{
    alg, attr, curve, Attest, ClockInfo, HashAlg, PcrSelection, Public, PublicKey, Signature,
};

/// How far in the future a payload's `collected_at` may be (clock skew allowance).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);

/// What the auditor expects and trusts.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The nonce the auditor issued.
    pub nonce: Vec<u8>,
    /// The PCR selection the auditor asked for.
    pub pcrs: PcrSelection,
    /// Trust anchors for EK certificates.
    pub trust_anchors: Vec<Certificate>,
    /// Whether a software-TPM CA (swtpm) may be trusted.
    pub allow_software_tpm: bool,
    /// The verification time.
    pub now: SystemTime,
    /// Oldest acceptable payload, if limited.
    pub max_age: Option<Duration>,
}

/// What the verifier's state knows about this report's AK and nonce.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The EK public (`TPM2B_PUBLIC`) the AK was enrolled with, if enrolled.
    pub enrolled_ek_pub: Option<Vec<u8>>,
    /// The host id the AK was enrolled for, if enrolled (and recorded).
    pub enrolled_host_id: Option<String>,
    /// Whether the nonce was already used.
    pub nonce_used: bool,
    /// The last clock accepted for this AK.
    pub last_clock: Option<ClockInfo>,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id (`signature`, `pcr_digest`...).
    pub id: &'static str,
    /// What the check establishes.
    pub what: &'static str,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (or a note when it passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The result of verifying one report.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Whether every check passed.
    pub ok: bool,
    /// Set when the EK chains to a software-TPM CA the auditor chose to trust.
    pub software_tpm: bool,
    /// The report's host id.
    pub host_id: String,
    /// The AK name (hex), when the AK public parsed.
    pub ak_name: Option<String>,
    /// The signed clock, when the attest parsed.
    #[serde(skip)]
    pub clock: Option<ClockInfo>,
    /// Every check in checklist order.
    pub checks: Vec<Check>,
}

impl Verdict {
    /// The ids of failed checks.
    pub fn failed(&self) -> Vec<&'static str> {
        failed_ids(&self.checks)
    }

    /// The check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        check_by_id(&self.checks, id)
    }
}

/// The ids of the failed checks among `checks`, in order (every verdict's `failed`).
pub fn failed_ids(checks: &[Check]) -> Vec<&'static str> {
    checks.iter().filter(|c| !c.passed).map(|c| c.id).collect()
}

/// The check with this id among `checks` (every verdict's `check`).
pub fn check_by_id<'a>(checks: &'a [Check], id: &str) -> Option<&'a Check> {
    checks.iter().find(|c| c.id == id)
}

/// Every check id, in verdict order, with what it establishes.
pub const CHECKS: &[(&str, &str)] = &[
    ("format", "report format is fog-attest-v1"),
    (
        "ek_certificate",
        "EK certificate chains to a trust anchor (validity, key usage)",
    ),
    (
        "ek_matches_certificate",
        "EK public equals the EK certificate's key",
    ),
    (
        "ak_attributes",
        "AK is a restricted signing key with SHA-256 name and a non-SHA-1 scheme",
    ),
    (
        "ak_enrolled",
        "AK was enrolled by credential activation under this EK",
    ),
    ("nonce_expected", "nonce equals the auditor's"),
    ("nonce_unused", "nonce was not used before"),
    (
        "attest_structure",
        "TPMS_ATTEST is a quote with TPM magic and no trailing bytes",
    ),
    (
        "signature_scheme",
        "signature scheme and hash equal the AK's",
    ),
    (
        "signature",
        "signature over TPMS_ATTEST verifies with the AK",
    ),
    (
        "qualified_signer",
        "qualifiedSigner equals the qualified name of the AK under the EK",
    ),
    ("extra_data", "extraData binds nonce and payload"),
    (
        "pcr_selection",
        "signed PCR selection equals the expected one",
    ),
    (
        "pcr_digest",
        "pcrDigest equals the hash of the reported PCR values",
    ),
    ("clock_safe", "clockInfo.safe is set"),
    (
        "clock_monotonic",
        "resetCount/restartCount/clock did not go backwards",
    ),
    (
        "payload_matches_wrapper",
        "payload host id, nonce and time agree with the wrapper",
    ),
    (
        "host_id_enrolled",
        "host id is the one the AK was enrolled for",
    ),
];

/// The id of the one check a malformed report's verdict has.
pub const MALFORMED: &str = "report_json";

/// The verdict on a report that is not well-formed (see [`crate::report::Report::from_json`]):
/// the single failed check [`MALFORMED`], with the parser's reason.
pub fn malformed_verdict(reason: String) -> Verdict {
    Verdict {
        ok: false,
        software_tpm: false,
        host_id: String::new(),
        ak_name: None,
        clock: None,
        checks: vec![Check {
            id: MALFORMED,
            what: "report is well-formed JSON of the fog-attest-v1 shape",
            passed: false,
            reason: Some(reason),
        }],
    }
}

type Outcome = Result<Option<String>, String>;

/// Verifies `report` against `opts` and `history`; never panics, whatever the input.
pub fn verify_report(report: &Report, opts: &VerifyOptions, history: &History) -> Verdict {
    verify_with(report, opts, history, &|r, o, ek| ek_checks(r, o, ek))
}

/// The outcomes of the two EK certificate checks (`ek_certificate`, `ek_matches_certificate`).
type EkOutcomes = (Outcome, Outcome);

/// Computes the EK certificate checks (directly, or through a cache).
type EkCheckFn<'a> = dyn Fn(&Report, &VerifyOptions, Result<&Public, String>) -> EkOutcomes + 'a;

fn ek_checks(report: &Report, opts: &VerifyOptions, ek: Result<&Public, String>) -> EkOutcomes {
    (check_ek_chain(report, opts), check_ek_matches(report, ek))
}

/// A verifier for many reports at one verification time: EK certificate checks, identical for
/// every report of the same TPM, are computed once per (EK certificate, chain, EK public) and
/// reused. Build a new one when the time, the anchors or the policy change.
#[derive(Debug)]
pub struct Verifier {
    opts: VerifyOptions,
    cache: std::sync::Mutex<std::collections::HashMap<Vec<u8>, EkOutcomes>>,
}

impl Verifier {
    /// A verifier with these options.
    pub fn new(opts: VerifyOptions) -> Self {
        Self {
            opts,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The options.
    pub fn options(&self) -> &VerifyOptions {
        &self.opts
    }

    /// Verifies one report (same result as [`verify_report`]).
    pub fn verify(&self, report: &Report, history: &History) -> Verdict {
        verify_with(report, &self.opts, history, &|r, o, ek| {
            let mut key = Vec::new();
            for part in [r.tpm.ek_cert.as_deref().unwrap_or_default(), &r.tpm.ek_pub]
                .into_iter()
                .chain(r.tpm.ek_chain.iter().map(Vec::as_slice))
            {
                key.extend_from_slice(&(part.len() as u64).to_be_bytes());
                key.extend_from_slice(part);
            }
            let key = HashAlg::Sha256.digest(&[&key]);
            if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
                return hit;
            }
            let fresh = ek_checks(r, o, ek);
            if let Ok(mut c) = self.cache.lock() {
                c.insert(key, fresh.clone());
            }
            fresh
        })
    }
}

fn verify_with(
    report: &Report,
    opts: &VerifyOptions,
    history: &History,
    ek_checks: &EkCheckFn<'_>,
) -> Verdict {
    let ak = Public::parse_tpm2b(&report.tpm.ak_pub);
    let ek = Public::parse_tpm2b(&report.tpm.ek_pub);
    let attest = Attest::parse(&report.tpm.quote.attest);
    let ak_name = ak.as_ref().ok().and_then(Public::name);
    let mut software_tpm = false;
    let mut results: Vec<Outcome> = Vec::with_capacity(CHECKS.len());

    results.push(if report.format == REPORT_FORMAT {
        Ok(None)
    } else {
        Err(format!(
            "format is \"{}\", expected \"{REPORT_FORMAT}\"",
            report.format
        ))
    });
    let (chain, matches) = ek_checks(report, opts, ek.as_ref().map_err(ToString::to_string));
    if let Ok(Some(note)) = &chain {
        software_tpm = note.contains("software TPM");
    }
    results.push(chain);
    results.push(matches);
    results.push(
        ak.as_ref()
            .map_err(|e| format!("AK public: {e}"))
            .and_then(check_ak_attributes),
    );
    results.push(check_enrolled(report, history));
    results.push(check_nonce_expected(report, opts));
    results.push(if history.nonce_used {
        Err("nonce was already used (replay)".into())
    } else {
        Ok(None)
    });
    results.push(attest.as_ref().map(|_| None).map_err(ToString::to_string));
    let sig = Signature::parse(&report.tpm.quote.signature).map_err(|e| e.to_string());
    let ak_ref = ak.as_ref().map_err(|e| format!("AK public: {e}"));
    results.push(match (&sig, &ak_ref) {
        (Ok(sig), Ok(ak)) => check_signature_scheme(sig, ak),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    });
    results.push(match (&sig, &ak_ref) {
        (Ok(sig), Ok(ak)) => check_signature(sig, ak, &report.tpm.quote.attest),
        (Err(e), _) | (_, Err(e)) => Err(e.clone()),
    });
    let attest_ref = attest
        .as_ref()
        .map_err(|_| "TPMS_ATTEST did not parse".to_string());
    let ak_qn = match (&ak, &ek) {
        (Ok(ak), Ok(ek)) => ek
            .endorsement_primary_qualified_name()
            .and_then(|ek_qn| ak.qualified_name(&ek_qn)),
        _ => None,
    };
    results.push(attest_ref.clone().and_then(|a| match &ak_qn {
        Some(qn) if a.qualified_signer == *qn => Ok(None),
        Some(qn) => Err(format!(
            "qualifiedSigner {} is not the qualified name of the AK under the EK {}",
            hex::encode(&a.qualified_signer),
            hex::encode(qn)
        )),
        None => Err("AK qualified name unavailable (AK or EK public unparseable, or unsupported nameAlg)".into()),
    }));
    results.push(attest_ref.clone().and_then(|a| {
        let expected = qualifying_data(&report.nonce, &report.payload);
        if a.extra_data == expected {
            Ok(None)
        } else {
            Err(format!(
                "extraData {} is not SHA-256(\"fog-attest-v1\\0\" || nonce || SHA-256(payload)) = {}",
                hex::encode(&a.extra_data),
                hex::encode(expected)
            ))
        }
    }));
    results.push(
        attest_ref
            .clone()
            .and_then(|a| check_pcr_selection(&a.quote.pcr_select, &opts.pcrs)),
    );
    results.push(attest_ref.clone().and_then(|a| {
        let h = sig
            .as_ref()
            .ok()
            .and_then(|s| HashAlg::from_tpm(s.hash()))
            .unwrap_or(HashAlg::Sha256);
        check_pcr_digest(a, report, h)
    }));
    results.push(attest_ref.clone().and_then(|a| {
        if a.clock_info.safe {
            Ok(None)
        } else {
            Err("clockInfo.safe is NO: the TPM clock may have gone backwards".into())
        }
    }));
    results.push(attest_ref.and_then(|a| check_clock(&a.clock_info, history.last_clock.as_ref())));
    results.push(check_payload(report, opts));
    results.push(check_host_enrolled(report, history));

    let checks: Vec<Check> = CHECKS
        .iter()
        .zip(results)
        .map(|(&(id, what), r)| match r {
            Ok(note) => Check {
                id,
                what,
                passed: true,
                reason: note,
            },
            Err(reason) => Check {
                id,
                what,
                passed: false,
                reason: Some(reason),
            },
        })
        .collect();
    Verdict {
        ok: checks.iter().all(|c| c.passed),
        software_tpm,
        host_id: report.host_id.clone(),
        ak_name: ak_name.map(hex::encode),
        clock: attest.ok().map(|a| a.clock_info),
        checks,
    }
}

/// Validates the EK certificate chain and the software-TPM policy.
pub fn check_ek_chain(report: &Report, opts: &VerifyOptions) -> Outcome {
    let der = report
        .tpm
        .ek_cert
        .as_deref()
        .ok_or("the report has no EK certificate: the EK cannot be tied to a manufacturer")?;
    ek_chain_outcome(der, &report.tpm.ek_chain, opts)
}

/// The chain check on raw DER inputs (shared with enrollment).
pub fn ek_chain_outcome(ek_cert: &[u8], chain: &[Vec<u8>], opts: &VerifyOptions) -> Outcome {
    let leaf = certs::parse_der(certs::trim_der_padding(ek_cert), "EK certificate")
        .map_err(|e| e.to_string())?;
    let chain: Vec<Certificate> = chain
        .iter()
        .enumerate()
        .filter_map(|(i, der)| {
            certs::parse_der(
                certs::trim_der_padding(der),
                &format!("chain certificate {i}"),
            )
            .ok()
        })
        .collect();
    let ok = certs::verify_chain(&leaf, &chain, &opts.trust_anchors, opts.now)
        .map_err(|e| e.to_string())?;
    if ok.software_tpm {
        if opts.allow_software_tpm {
            Ok(Some(format!(
                "software TPM: chains to \"{}\" (trusted by --allow-software-tpm)",
                ok.anchor
            )))
        } else {
            Err(format!(
                "EK certificate chains to a software TPM CA (\"{}\"); refused without --allow-software-tpm",
                ok.anchor
            ))
        }
    } else {
        Ok(Some(format!("chains to \"{}\"", ok.anchor)))
    }
}

fn check_ek_matches(report: &Report, ek: Result<&Public, String>) -> Outcome {
    let ek = ek.map_err(|e| format!("EK public: {e}"))?;
    let der = report
        .tpm
        .ek_cert
        .as_deref()
        .ok_or("the report has no EK certificate")?;
    let cert = certs::parse_der(certs::trim_der_padding(der), "EK certificate")
        .map_err(|e| e.to_string())?;
    certs::check_ek_matches(&cert, ek)
        .map(|()| None)
        .map_err(|e| e.to_string())
}

/// Checks the AK's attributes, name algorithm, key type and scheme.
pub fn check_ak_attributes(ak: &Public) -> Outcome {
    if ak.attributes != attr::AK {
        let missing = attr::AK & !ak.attributes;
        let extra = ak.attributes & !attr::AK;
        let mut why = Vec::new();
        for (bit, name) in [
            (attr::RESTRICTED, "restricted"),
            (attr::SIGN, "sign"),
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
            (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (attr::USER_WITH_AUTH, "userWithAuth"),
        ] {
            if missing & bit != 0 {
                why.push(format!("lacks {name}"));
            }
        }
        if extra & attr::DECRYPT != 0 {
            why.push("has decrypt".into());
        }
        if extra & !attr::DECRYPT != 0 {
            why.push(format!(
                "has extra attributes {:#010x}",
                extra & !attr::DECRYPT
            ));
        }
        return Err(format!(
            "AK objectAttributes {:#010x}: {}",
            ak.attributes,
            why.join(", ")
        ));
    }
    if ak.name_alg != alg::SHA256 {
        return Err(format!(
            "AK nameAlg is {:#06x}, expected SHA-256",
            ak.name_alg
        ));
    }
    let scheme = ak
        .scheme
        .ok_or("AK has no signing scheme (NULL): a quote's scheme would be unbound")?;
    if HashAlg::from_tpm(scheme.hash).is_none() {
        return Err(format!(
            "AK scheme hash {:#06x} is not SHA-256/384/512",
            scheme.hash
        ));
    }
    match (&ak.key, scheme.scheme) {
        (PublicKey::Rsa { key_bits, .. }, alg::RSASSA | alg::RSAPSS) if *key_bits >= 2048 => Ok(None),
        (PublicKey::Ecc { curve: c, .. }, alg::ECDSA) if *c == curve::NIST_P256 || *c == curve::NIST_P384 => Ok(None),
        _ => Err(format!("AK key type or scheme {:#06x} unsupported (RSA>=2048 RSASSA/RSAPSS or ECDSA P-256/P-384)", scheme.scheme)),
    }
}

fn check_enrolled(report: &Report, history: &History) -> Outcome {
    match &history.enrolled_ek_pub {
        None => {
            Err("AK is not enrolled (run verify enroll-challenge / enroll-finish first)".into())
        }
        Some(ek) if *ek == report.tpm.ek_pub => Ok(None),
        Some(_) => Err("AK was enrolled under a different EK".into()),
    }
}

fn check_host_enrolled(report: &Report, history: &History) -> Outcome {
    match (&history.enrolled_ek_pub, &history.enrolled_host_id) {
        (None, _) => Err("AK is not enrolled".into()),
        (Some(_), None) => {
            Err("the AK's enrollment has no host id recorded: enroll it again".into())
        }
        (Some(_), Some(host)) if *host == report.host_id => Ok(None),
        (Some(_), Some(host)) => Err(format!(
            "host_id \"{}\" is not the host \"{}\" the AK was enrolled for",
            report.host_id.escape_debug(),
            host.escape_debug()
        )),
    }
}

fn check_nonce_expected(report: &Report, opts: &VerifyOptions) -> Outcome {
    use subtle::ConstantTimeEq;
    if report.nonce.len() == opts.nonce.len() && bool::from(report.nonce.ct_eq(&opts.nonce)) {
        Ok(None)
    } else {
        Err(format!(
            "nonce {} is not the expected {}",
            hex::encode(&report.nonce),
            hex::encode(&opts.nonce)
        ))
    }
}

fn check_signature_scheme(sig: &Signature, ak: &Public) -> Outcome {
    let scheme = ak.scheme.ok_or("AK has no signing scheme")?;
    if sig.hash() == alg::SHA1 {
        return Err("signature uses SHA-1".into());
    }
    if sig.scheme() != scheme.scheme || sig.hash() != scheme.hash {
        return Err(format!(
            "signature scheme {:#06x}/hash {:#06x} differs from the AK's {:#06x}/{:#06x}",
            sig.scheme(),
            sig.hash(),
            scheme.scheme,
            scheme.hash
        ));
    }
    Ok(None)
}

/// Verifies `sig` over `message` with the AK, using the AK's own scheme
/// ([`crate::sigverify`]).
pub fn check_signature(sig: &Signature, ak: &Public, message: &[u8]) -> Outcome {
    crate::sigverify::verify(sig, ak, message)
        .map(|()| None)
        .map_err(|what| format!("signature does not verify with the AK ({what})"))
}

fn check_pcr_selection(signed: &PcrSelection, expected: &PcrSelection) -> Outcome {
    let norm = |s: &PcrSelection| {
        let mut v = s.pairs();
        v.sort_unstable();
        v
    };
    let mut banks: Vec<u16> = signed.banks.iter().map(|b| b.hash).collect();
    banks.sort_unstable();
    if let Some(twice) = banks.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "signed PCR selection names bank {} twice",
            bank_name(twice[0])
        ));
    }
    if norm(signed) == norm(expected) {
        Ok(None)
    } else {
        Err(format!(
            "signed PCR selection {} differs from the expected {}",
            format_pcr_selection(signed),
            format_pcr_selection(expected)
        ))
    }
}

/// A bank's name (`sha256`), or its algorithm id when unknown.
fn bank_name(id: u16) -> String {
    HashAlg::from_tpm(id).map_or_else(|| format!("{id:#06x}"), |h| h.name().to_owned())
}

fn check_pcr_digest(a: &Attest, report: &Report, h: HashAlg) -> Outcome {
    let pairs = a.quote.pcr_select.pairs();
    let mut values = Vec::with_capacity(pairs.len());
    for (bank_id, index) in &pairs {
        let bank = HashAlg::from_tpm(*bank_id)
            .ok_or_else(|| format!("signed selection uses unsupported bank {bank_id:#06x}"))?;
        let text = report
            .tpm
            .quote
            .pcrs
            .get(bank.name())
            .and_then(|m| m.get(index))
            .ok_or_else(|| {
                format!(
                    "PCR {}:{index} is in the signed selection but not in the report",
                    bank.name()
                )
            })?;
        // Lowercase only, as written: one value, one spelling.
        if !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!("PCR {}:{index} is not lowercase hex", bank.name()));
        }
        let value =
            hex::decode(text).map_err(|_| format!("PCR {}:{index} is not hex", bank.name()))?;
        if value.len() != bank.size() {
            return Err(format!(
                "PCR {}:{index} is {} bytes, expected {}",
                bank.name(),
                value.len(),
                bank.size()
            ));
        }
        values.push(value);
    }
    let reported: usize = report.tpm.quote.pcrs.values().map(|m| m.len()).sum();
    if reported != pairs.len() {
        return Err(format!(
            "the report carries {reported} PCR values but the signed selection covers {}",
            pairs.len()
        ));
    }
    let parts: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let digest = h.digest(&parts);
    if digest == a.quote.pcr_digest {
        Ok(None)
    } else {
        Err(format!(
            "pcrDigest {} does not match the reported PCR values (hash {})",
            hex::encode(&a.quote.pcr_digest),
            hex::encode(digest)
        ))
    }
}

fn check_clock(now: &ClockInfo, last: Option<&ClockInfo>) -> Outcome {
    let Some(last) = last else {
        return Ok(Some("first report from this AK".into()));
    };
    if now.reset_count < last.reset_count {
        return Err(format!(
            "resetCount {} is lower than last seen {}",
            now.reset_count, last.reset_count
        ));
    }
    if now.reset_count == last.reset_count {
        if now.restart_count < last.restart_count {
            return Err(format!(
                "restartCount {} is lower than last seen {} (same resetCount)",
                now.restart_count, last.restart_count
            ));
        }
        if now.restart_count == last.restart_count && now.clock < last.clock {
            return Err(format!(
                "clock {} ms is lower than last seen {} ms",
                now.clock, last.clock
            ));
        }
    }
    Ok(None)
}

fn check_payload(report: &Report, opts: &VerifyOptions) -> Outcome {
    let p = Payload::from_json(&report.payload)?;
    if p.format != PAYLOAD_FORMAT {
        return Err(format!("payload format is \"{}\"", p.format));
    }
    if p.host_id != report.host_id {
        return Err(format!(
            "payload host_id \"{}\" differs from the report's \"{}\"",
            p.host_id, report.host_id
        ));
    }
    if p.nonce != report.nonce {
        return Err("payload nonce differs from the report's".into());
    }
    let now = opts
        .now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    if p.collected_at > now.saturating_add(MAX_FUTURE_SKEW.as_secs()) {
        return Err(format!(
            "payload collected_at {} is in the future (now {now})",
            p.collected_at
        ));
    }
    if let Some(max) = opts.max_age {
        if now.saturating_sub(p.collected_at) > max.as_secs() {
            return Err(format!(
                "payload collected_at {} is older than {} s",
                p.collected_at,
                max.as_secs()
            ));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_history_rules() {
        let c = |reset, restart, clock| ClockInfo {
            clock,
            reset_count: reset,
            restart_count: restart,
            safe: true,
        };
        assert!(check_clock(&c(3, 0, 10), None).is_ok());
        assert!(check_clock(&c(3, 0, 10), Some(&c(3, 0, 9))).is_ok());
        assert!(check_clock(&c(4, 0, 1), Some(&c(3, 5, 9))).is_ok());
        assert!(check_clock(&c(2, 9, 99), Some(&c(3, 0, 9)))
            .unwrap_err()
            .contains("resetCount 2 is lower than last seen 3"));
        assert!(check_clock(&c(3, 0, 99), Some(&c(3, 1, 9)))
            .unwrap_err()
            .contains("restartCount"));
        assert!(check_clock(&c(3, 1, 8), Some(&c(3, 1, 9)))
            .unwrap_err()
            .contains("clock 8"));
    }

    #[test]
    fn unrestricted_ak_is_named_in_the_reason() {
        let tpmt = crate::structures::tests::rsa_ak_tpmt(&[0xc5; 256]);
        let mut ak = Public::parse(&tpmt).unwrap();
        assert_eq!(check_ak_attributes(&ak), Ok(None));
        ak.attributes &= !attr::RESTRICTED;
        assert!(check_ak_attributes(&ak)
            .unwrap_err()
            .contains("lacks restricted"));
        ak.attributes |= attr::RESTRICTED | attr::DECRYPT;
        assert!(check_ak_attributes(&ak)
            .unwrap_err()
            .contains("has decrypt"));
    }

    #[test]
    fn selection_comparison_ignores_encoding_but_not_content() {
        let a = crate::report::parse_pcr_spec("sha256:0-7").unwrap();
        let mut b = a.clone();
        b.banks[0].select.push(0); // sizeofSelect 4 instead of 3
        assert_eq!(check_pcr_selection(&b, &a), Ok(None));
        let c = crate::report::parse_pcr_spec("sha256:0-3").unwrap();
        assert!(check_pcr_selection(&c, &a).unwrap_err().contains("differs"));
        // sha256:0-3 and sha256:4-7 as two entries: the same set of PCRs, but a bank twice.
        let mut twice = c.clone();
        let upper = crate::report::parse_pcr_spec("sha256:4-7").unwrap();
        twice.banks.push(upper.banks[0].clone());
        assert_eq!(
            check_pcr_selection(&twice, &a),
            Err("signed PCR selection names bank sha256 twice".into())
        );
    }

    #[test]
    fn a_pcr_given_twice_or_spelled_two_ways_is_a_malformed_report() {
        let report = |pcrs: &str| {
            format!(
                r#"{{"format":"fog-attest-v1","host_id":"h","nonce":"AAAAAAAAAAA=","payload":"",
                "tpm":{{"ak_pub":"","ek_pub":"","ek_cert":null,"ek_chain":[],
                "quote":{{"attest":"","signature":"","pcrs":{{"sha256":{pcrs}}}}}}}}}"#
            )
        };
        assert!(Report::from_json(report(r#"{"0":"aa","1":"bb"}"#).as_bytes()).is_ok());
        for (pcrs, why) in [
            (r#"{"0":"aa","0":"bb"}"#, "appears twice"),
            (r#"{"0":"aa","00":"bb"}"#, "not 0 to 31 in plain decimal"),
            (r#"{"+1":"aa"}"#, "not 0 to 31"),
            (r#"{"32":"aa"}"#, "not 0 to 31"),
        ] {
            let err = Report::from_json(report(pcrs).as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{pcrs}: {err}");
        }
    }

    #[test]
    fn the_host_id_must_be_the_enrolled_one() {
        let report: Report = serde_json::from_value(serde_json::json!({
            "format": "fog-attest-v1", "host_id": "host-z", "nonce": "AAAAAAAAAAA=",
            "payload": "", "tpm": {"ak_pub": "", "ek_pub": "", "ek_cert": null, "ek_chain": [],
            "quote": {"attest": "", "signature": "", "pcrs": {}}}
        }))
        .unwrap();
        let enrolled = |host: Option<&str>| History {
            enrolled_ek_pub: Some(Vec::new()),
            enrolled_host_id: host.map(str::to_owned),
            ..History::default()
        };
        assert_eq!(
            check_host_enrolled(&report, &enrolled(Some("host-z"))),
            Ok(None)
        );
        assert!(check_host_enrolled(&report, &enrolled(Some("host-a")))
            .unwrap_err()
            .contains("not the host \"host-a\" the AK was enrolled for"));
        assert!(check_host_enrolled(&report, &enrolled(None))
            .unwrap_err()
            .contains("enroll it again"));
        assert!(check_host_enrolled(&report, &History::default()).is_err());
    }

    #[test]
    fn the_payload_is_utf8_json_with_typed_members_and_no_duplicates() {
        let good = br#"{"format":"fog-attest-v1-payload","host_id":"h","nonce":"AAAAAAAAAAA=","agent_version":"1","collected_at":5,"inventory":{},"benchmarks":null,"extra":[1]}"#;
        assert!(Payload::from_json(good).is_ok());
        let cases: [(&[u8], &str); 5] = [
            (
                b"{\"format\":\"fog-attest-v1-payload\",\"x\":\"\xff\"}",
                "not UTF-8",
            ),
            (br#"{"host_id":"a","host_id":"b"}"#, "appears twice"),
            (
                br#"{"format":"fog-attest-v1-payload","host_id":"h","nonce":"AAAAAAAAAAA=","agent_version":"1","collected_at":-5,"inventory":{},"benchmarks":null}"#,
                "\"collected_at\" is not integer",
            ),
            (
                br#"{"format":"fog-attest-v1-payload","host_id":"h","nonce":"AAAAAAAAAAA=","agent_version":"1","collected_at":5,"benchmarks":null}"#,
                "\"inventory\" is missing",
            ),
            (b"[]", "not a JSON object"),
        ];
        for (bytes, why) in cases {
            let err = Payload::from_json(bytes).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }
}
