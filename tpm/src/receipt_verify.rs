//! The offline verifier of `fog-receipts-v1` bundles (normative text: `RECEIPTS.md` §6): every
//! check of the checklist, each with a stable id and its own reason, collected into a
//! [`ReceiptVerdict`]. Pure: the enrolled AKs come in as a [`VerifierState`]; nothing is
//! recorded.
//!
//! Costs: the bundle, the TPM keys and the certification are parsed once per bundle; each
//! receipt costs one strict JSON parse of its body and one ECDSA P-256 verification (`ring`);
//! each quote one signature verification by the AK.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde::Serialize;
use x509_cert::Certificate;

use crate::receipt::{
    quote_qualifying_data, signing_digest, ReceiptBody, ReceiptBundle, ReceiptKind, ReceiptUsage,
    BUNDLE_FORMAT, GENESIS, RECEIPT_FORMAT, RECEIPT_SIGNING_CONTEXT,
};
use crate::store::VerifierState;
use crate::structures::{alg, Attest, ClockInfo, Public, Signature};
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
        self.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.id)
            .collect()
    }

    /// The check with this id.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
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

/// The receipts' seqs, counted, with the index of each seq's receipt when it is unique.
struct Chain<'a> {
    p: &'a Parsed,
    /// seq -> indices (bundle order) of the receipts with that seq.
    by_seq: BTreeMap<u64, Vec<usize>>,
}

impl<'a> Chain<'a> {
    fn new(p: &'a Parsed) -> Self {
        let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, body) in p.bodies.iter().enumerate() {
            by_seq.entry(body.seq).or_default().push(i);
        }
        Self { p, by_seq }
    }

    /// Chain neighbours: (index of seq k-1, index of seq k) for every k whose seq and k-1 are
    /// each held by exactly one receipt, in seq order.
    fn neighbours(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.by_seq.iter().filter_map(|(&seq, at)| {
            let before = self.by_seq.get(&seq.checked_sub(1)?)?;
            match (before.as_slice(), at.as_slice()) {
                ([a], [b]) => Some((*a, *b)),
                _ => None,
            }
        })
    }

    fn start(&self) -> Outcome {
        let first = self.p.bodies.first().ok_or("the bundle has no receipts")?;
        if first.seq != 0 {
            return Err(format!("the first receipt has seq {}, not 0", first.seq));
        }
        if first.prev != GENESIS {
            return Err("the first receipt's prev is not GENESIS (64 zeros)".into());
        }
        if first.kind != ReceiptKind::Start {
            return Err(format!(
                "the first receipt is of kind {:?}, not start",
                first.kind
            ));
        }
        if let Some(i) =
            (1..self.p.bodies.len()).find(|&i| self.p.bodies[i].kind == ReceiptKind::Start)
        {
            return Err(format!("receipt {i} is a second start receipt"));
        }
        Ok(None)
    }

    fn gap(&self) -> Outcome {
        let mut expected = 0u64;
        for &seq in self.by_seq.keys() {
            // Seqs come in ascending order, so seq >= expected.
            if seq != expected {
                return Err(if seq - expected == 1 {
                    format!("seq {expected} is missing")
                } else {
                    format!("seqs {expected} to {} are missing", seq - 1)
                });
            }
            expected = seq.saturating_add(1);
        }
        Ok(None)
    }

    fn order(&self) -> Outcome {
        match self.p.bodies.windows(2).position(|w| w[1].seq < w[0].seq) {
            None => Ok(None),
            Some(i) => Err(format!(
                "receipt {} (seq {}) follows receipt {i} (seq {}): reordered",
                i + 1,
                self.p.bodies[i + 1].seq,
                self.p.bodies[i].seq
            )),
        }
    }

    fn fork(&self) -> Outcome {
        if let Some((seq, at)) = self.by_seq.iter().find(|(_, at)| at.len() > 1) {
            return Err(format!(
                "seq {seq} is held by {} different receipts ({at:?}): the chain forks",
                at.len()
            ));
        }
        for (a, b) in self.neighbours() {
            if self.p.bodies[b].prev != hex::encode(self.p.digests[a]) {
                return Err(format!(
                    "receipt {b} (seq {})'s prev is not the digest of receipt {a} (seq {}): the chain forks",
                    self.p.bodies[b].seq, self.p.bodies[a].seq
                ));
            }
        }
        Ok(None)
    }

    fn end(&self) -> Outcome {
        let bodies = &self.p.bodies;
        for (i, body) in bodies.iter().enumerate() {
            match (body.kind, &body.termination) {
                (ReceiptKind::End, None) => {
                    return Err(format!("receipt {i} ends the job without a termination"))
                }
                (ReceiptKind::Start | ReceiptKind::Periodic, Some(_)) => {
                    return Err(format!(
                        "receipt {i} carries a termination but is not an end receipt"
                    ))
                }
                _ => {}
            }
        }
        let ends: Vec<usize> = (0..bodies.len())
            .filter(|&i| bodies[i].kind == ReceiptKind::End)
            .collect();
        let Some(&end) = ends.first() else {
            return Ok(Some("the job has not ended (no end receipt)".into()));
        };
        if ends.len() > 1 {
            return Err(format!("receipts {ends:?} all end the job"));
        }
        if end + 1 != bodies.len() {
            return Err(format!("receipt {} follows the end receipt {end}", end + 1));
        }
        if let Some(i) = (0..end).find(|&i| bodies[i].seq >= bodies[end].seq) {
            return Err(format!(
                "receipt {i} has seq {}, not lower than the end receipt's {}",
                bodies[i].seq, bodies[end].seq
            ));
        }
        Ok(None)
    }

    fn counters(&self) -> Outcome {
        let bodies = &self.p.bodies;
        if let Some(i) = bodies
            .iter()
            .position(|b| b.to_unix_millis < b.from_unix_millis)
        {
            return Err(format!(
                "receipt {i}: interval ends ({}) before it starts ({})",
                bodies[i].to_unix_millis, bodies[i].from_unix_millis
            ));
        }
        for (a, b) in self.neighbours() {
            let (x, y) = (&bodies[a], &bodies[b]);
            if y.from_unix_millis != x.to_unix_millis {
                return Err(format!(
                    "seq {}: interval starts at {}, seq {} ended at {}",
                    y.seq, y.from_unix_millis, x.seq, x.to_unix_millis
                ));
            }
            let (u, v) = (&x.usage, &y.usage);
            for (name, before, after) in [
                ("run_millis", u.run_millis, v.run_millis),
                ("cpu_nanos", u.cpu_nanos, v.cpu_nanos),
                (
                    "memory_mib_millis",
                    u.memory_mib_millis,
                    v.memory_mib_millis,
                ),
                (
                    "memory_peak_bytes",
                    u.memory_peak_bytes,
                    v.memory_peak_bytes,
                ),
                ("net_in_bytes", u.net_in_bytes, v.net_in_bytes),
                ("net_out_bytes", u.net_out_bytes, v.net_out_bytes),
                ("disk_peak_bytes", u.disk_peak_bytes, v.disk_peak_bytes),
            ] {
                if after < before {
                    return Err(format!(
                        "seq {}: {name} {after} is lower than seq {}'s {before}",
                        y.seq, x.seq
                    ));
                }
            }
            for (gpu, before) in &u.gpu_millis {
                match v.gpu_millis.get(gpu) {
                    None => {
                        return Err(format!(
                            "seq {}: GPU {} listed at seq {} is gone",
                            y.seq,
                            gpu.escape_debug(),
                            x.seq
                        ))
                    }
                    Some(after) if after < before => {
                        return Err(format!(
                            "seq {}: gpu_millis of {} {after} is lower than seq {}'s {before}",
                            y.seq,
                            gpu.escape_debug(),
                            x.seq
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(None)
    }
}

fn check_quote_signatures(
    p: &Parsed,
    ak: Result<&Public, &String>,
    quotes: &[Result<Attest, String>],
) -> Outcome {
    let ak = ak.map_err(Clone::clone)?;
    let scheme = ak.scheme.ok_or("AK has no signing scheme")?;
    for (j, (q, attest)) in p.bundle.quotes.iter().zip(quotes).enumerate() {
        attest.as_ref().map_err(Clone::clone)?;
        let sig = Signature::parse(&q.signature).map_err(|e| format!("quote {j}: {e}"))?;
        if sig.scheme() != scheme.scheme || sig.hash() != scheme.hash {
            return Err(format!(
                "quote {j}: signature scheme {:#06x}/{:#06x} is not the AK's {:#06x}/{:#06x}",
                sig.scheme(),
                sig.hash(),
                scheme.scheme,
                scheme.hash
            ));
        }
        crate::sigverify::verify(&sig, ak, &q.attest).map_err(|what| {
            format!(
                "quote {j} (seq {}): signature does not verify with the AK ({what})",
                q.seq
            )
        })?;
    }
    Ok(None)
}

/// Every quote's attest parsed, or the first failure.
fn attests(quotes: &[Result<Attest, String>]) -> Result<Vec<&Attest>, String> {
    quotes
        .iter()
        .map(|q| q.as_ref().map_err(Clone::clone))
        .collect()
}

fn check_quote_binding(
    p: &Parsed,
    chain: &Chain<'_>,
    quotes: &[Result<Attest, String>],
) -> Outcome {
    let attests = attests(quotes)?;
    let qs = &p.bundle.quotes;
    for (j, (q, attest)) in qs.iter().zip(&attests).enumerate() {
        let (prev, receipts) = &p.quote_links[j];
        let expected = quote_qualifying_data(q.seq, prev, receipts);
        if attest.extra_data != expected {
            return Err(format!(
                "quote {j} (seq {}): extraData {} is not the qualifying data {} of its seq, prev and receipts",
                q.seq,
                hex::encode(&attest.extra_data),
                hex::encode(expected)
            ));
        }
        if q.seq == 0 && q.prev != GENESIS {
            return Err(format!("quote {j} has seq 0 but its prev is not GENESIS"));
        }
    }
    // The quote chain: where seqs s and s+1 are each held by exactly one quote, prev links them.
    let mut by_seq: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (j, q) in qs.iter().enumerate() {
        by_seq.entry(q.seq).or_default().push(j);
    }
    for (&seq, at) in &by_seq {
        let Some(before) = seq.checked_sub(1).and_then(|s| by_seq.get(&s)) else {
            continue;
        };
        if let ([a], [b]) = (before.as_slice(), at.as_slice()) {
            if p.quote_links[*b].0 != qs[*a].digest() {
                return Err(format!(
                    "quote {b} (seq {seq})'s prev is not the digest of quote {a} (seq {})",
                    seq - 1
                ));
            }
        }
    }
    // Coverage: each receipt's digest listed exactly once, at a position (quote seq, index).
    let mut listed: HashMap<[u8; 32], Vec<(u64, usize)>> =
        p.digests.iter().map(|d| (*d, Vec::new())).collect();
    for (j, q) in qs.iter().enumerate() {
        for (k, d) in p.quote_links[j].1.iter().enumerate() {
            if let Some(at) = listed.get_mut(d) {
                at.push((q.seq, k));
            }
        }
    }
    let mut position = Vec::with_capacity(p.digests.len());
    for (i, d) in p.digests.iter().enumerate() {
        match listed[d].as_slice() {
            [at] => position.push(*at),
            [] => {
                return Err(format!(
                    "receipt {i} (seq {}) is in no quote",
                    p.bodies[i].seq
                ))
            }
            many => {
                return Err(format!(
                    "receipt {i} (seq {}) is listed {} times in the quotes",
                    p.bodies[i].seq,
                    many.len()
                ))
            }
        }
    }
    // Order: a receipt of a lower seq is quoted before one of a higher seq.
    let mut before_max: Option<((u64, usize), u64)> = None;
    for (&seq, at) in &chain.by_seq {
        if let Some((max_pos, max_seq)) = before_max {
            if let Some(&i) = at.iter().find(|&&i| position[i] <= max_pos) {
                return Err(format!(
                    "receipt {i} (seq {seq}) is quoted before or with seq {max_seq}'s receipt"
                ));
            }
        }
        for &i in at {
            if before_max.is_none_or(|(max_pos, _)| position[i] > max_pos) {
                before_max = Some((position[i], seq));
            }
        }
    }
    Ok(None)
}

fn clock_key(c: &ClockInfo) -> (u32, u32, u64) {
    (c.reset_count, c.restart_count, c.clock)
}

fn fmt_clock(c: &ClockInfo) -> String {
    format!(
        "(resetCount {}, restartCount {}, clock {} ms)",
        c.reset_count, c.restart_count, c.clock
    )
}

fn check_tpm_clock(quotes: &[Result<Attest, String>]) -> Outcome {
    let attests = attests(quotes)?;
    for (j, w) in attests.windows(2).enumerate() {
        if clock_key(&w[1].clock_info) <= clock_key(&w[0].clock_info) {
            return Err(format!(
                "quote {} {} is not later than quote {j} {}",
                j + 1,
                fmt_clock(&w[1].clock_info),
                fmt_clock(&w[0].clock_info)
            ));
        }
    }
    Ok(None)
}

fn check_rollback(p: &Parsed, quotes: &[Result<Attest, String>]) -> Outcome {
    let attests = attests(quotes)?;
    let qs = &p.bundle.quotes;
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.sort_by_key(|&j| qs[j].seq);
    for w in order.windows(2) {
        let (a, b) = (w[0], w[1]);
        if qs[a].seq == qs[b].seq && qs[a].attest != qs[b].attest {
            return Err(format!(
                "quotes {a} and {b} both have seq {} and differ: the agent's quote chain was rewritten (database rolled back)",
                qs[a].seq
            ));
        }
    }
    // The latest clock among quotes of lower seq, against each quote.
    let mut latest: Option<(usize, (u32, u32, u64))> = None;
    let mut i = 0;
    while i < order.len() {
        let seq = qs[order[i]].seq;
        let group: Vec<usize> = order[i..]
            .iter()
            .copied()
            .take_while(|&j| qs[j].seq == seq)
            .collect();
        if let Some((a, clock)) = latest {
            if let Some(&b) = group
                .iter()
                .find(|&&b| clock_key(&attests[b].clock_info) < clock)
            {
                return Err(format!(
                    "quote {a} (seq {}) {} is later than quote {b} (seq {seq}) {}: the agent's quote chain was rewritten (database rolled back)",
                    qs[a].seq,
                    fmt_clock(&attests[a].clock_info),
                    fmt_clock(&attests[b].clock_info)
                ));
            }
        }
        for &j in &group {
            let c = clock_key(&attests[j].clock_info);
            if latest.is_none_or(|(_, l)| c > l) {
                latest = Some((j, c));
            }
        }
        i += group.len();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::{Duration, UNIX_EPOCH};

    /// The published vectors (`tpm/conformance/receipts`): this verifier gives every case the
    /// manifest's verdict.
    #[test]
    fn verify_agrees_with_every_receipt_conformance_vector() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/receipts");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let cases = manifest["cases"].as_array().unwrap();
        assert!(cases.len() >= 20, "{} cases", cases.len());
        for case in cases {
            let id = case["id"].as_str().unwrap();
            let read =
                |member: &str| std::fs::read(dir.join(case[member].as_str().unwrap())).unwrap();
            let state: VerifierState = serde_json::from_slice(&read("verifier_state")).unwrap();
            let opts = ReceiptVerifyOptions {
                trust_anchors: crate::certs::parse_pem_bundle(&read("trust_anchors")).unwrap(),
                allow_software_tpm: case["allow_software_tpm"].as_bool().unwrap(),
            };
            let at = UNIX_EPOCH + Duration::from_secs(case["at"].as_u64().unwrap());
            let verdict = verify_bundle_at(&read("bundle"), &opts, &state, at);
            let expected: Vec<&str> = case["expect"]["failed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(verdict.failed(), expected, "{id}: {:#?}", verdict.checks);
            assert_eq!(
                verdict.passed,
                case["expect"]["passed"].as_bool().unwrap(),
                "{id}"
            );
        }
    }

    #[test]
    fn a_malformed_bundle_has_one_failed_check() {
        let v = verify_bundle(
            b"{\"format\": 1}",
            &ReceiptVerifyOptions::default(),
            &VerifierState::default(),
        );
        assert_eq!(v.failed(), [MALFORMED]);
        assert_eq!(v.checks.len(), 1);
        assert!(!v.passed);
    }

    #[test]
    fn every_check_id_is_distinct() {
        let mut ids: Vec<&str> = CHECKS.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CHECKS.len());
    }

    fn body(seq: u64, cpu: u64, gpu: Option<u64>) -> ReceiptBody {
        ReceiptBody {
            format: RECEIPT_FORMAT.into(),
            host_id: "h".into(),
            job_id: "j".into(),
            seq,
            prev: GENESIS.into(),
            key: "00".into(),
            kind: if seq == 0 {
                ReceiptKind::Start
            } else {
                ReceiptKind::Periodic
            },
            labels: BTreeMap::new(),
            image_digest: String::new(),
            spec_sha256: String::new(),
            from_unix_millis: seq * 10,
            to_unix_millis: seq * 10 + 10,
            usage: ReceiptUsage {
                cpu_nanos: cpu,
                gpu_millis: gpu.map(|g| ("GPU-1".to_owned(), g)).into_iter().collect(),
                ..ReceiptUsage::default()
            },
            termination: None,
        }
    }

    fn parsed(bodies: Vec<ReceiptBody>, quotes: Vec<(u64, u8)>) -> Parsed {
        let quotes: Vec<crate::receipt::ReceiptQuote> = quotes
            .into_iter()
            .map(|(seq, attest)| crate::receipt::ReceiptQuote {
                seq,
                prev: GENESIS.into(),
                receipts: Vec::new(),
                attest: vec![attest],
                signature: Vec::new(),
            })
            .collect();
        Parsed {
            digests: bodies
                .iter()
                .map(|b| {
                    crate::receipt::SignedReceipt {
                        body: b.to_bytes(),
                        signature: Vec::new(),
                    }
                    .digest()
                })
                .collect(),
            quote_links: quotes.iter().map(|_| ([0; 32], Vec::new())).collect(),
            bundle: ReceiptBundle {
                format: BUNDLE_FORMAT.into(),
                host_id: "h".into(),
                job_id: "j".into(),
                tpm: crate::receipt::BundleTpm {
                    ak_pub: Vec::new(),
                    ek_pub: Vec::new(),
                    ek_cert: None,
                    ek_chain: Vec::new(),
                },
                identity: crate::receipt::CertifiedKey {
                    key_pub: Vec::new(),
                    certify_attest: Vec::new(),
                    certify_signature: Vec::new(),
                },
                receipts: Vec::new(),
                quotes,
            },
            bodies,
        }
    }

    #[test]
    fn counters_decreasing_a_gpu_gone_or_an_interval_gap_fail_between_chain_neighbours() {
        let ok = parsed(vec![body(0, 5, Some(1)), body(1, 5, Some(2))], vec![]);
        assert_eq!(Chain::new(&ok).counters(), Ok(None));
        let p = parsed(vec![body(0, 5, None), body(1, 4, None)], vec![]);
        assert!(Chain::new(&p)
            .counters()
            .unwrap_err()
            .contains("cpu_nanos 4 is lower"));
        let p = parsed(vec![body(0, 5, Some(1)), body(1, 5, None)], vec![]);
        assert!(Chain::new(&p).counters().unwrap_err().contains("is gone"));
        let mut late = body(1, 5, None);
        late.from_unix_millis += 1;
        let p = parsed(vec![body(0, 5, None), late], vec![]);
        assert!(Chain::new(&p)
            .counters()
            .unwrap_err()
            .contains("interval starts at 11"));
        // Not neighbours (seq 1 missing): no comparison; the gap is chain_gap's.
        let p = parsed(vec![body(0, 5, None), body(2, 1, None)], vec![]);
        assert_eq!(Chain::new(&p).counters(), Ok(None));
        assert_eq!(Chain::new(&p).gap(), Err("seq 1 is missing".into()));
    }

    #[test]
    fn a_termination_outside_an_end_receipt_fails_chain_end() {
        let mut b = body(1, 0, None);
        b.termination = Some("exited".into());
        let p = parsed(vec![body(0, 0, None), b], vec![]);
        assert!(Chain::new(&p)
            .end()
            .unwrap_err()
            .contains("not an end receipt"));
    }

    #[test]
    fn rollback_and_clock_rules() {
        let attest = |reset, clock| Attest {
            qualified_signer: Vec::new(),
            extra_data: Vec::new(),
            clock_info: ClockInfo {
                clock,
                reset_count: reset,
                restart_count: 0,
                safe: true,
            },
            firmware_version: 0,
            quote: crate::structures::QuoteInfo {
                pcr_select: crate::structures::PcrSelection::default(),
                pcr_digest: Vec::new(),
            },
        };
        // seq 0 at 10, seq 5 at 20: fine, in either bundle order for rollback.
        let p = parsed(vec![], vec![(5, 1), (0, 2)]);
        let q = vec![Ok(attest(1, 20)), Ok(attest(1, 10))];
        assert_eq!(check_rollback(&p, &q), Ok(None));
        assert!(check_tpm_clock(&q).unwrap_err().contains("is not later"));
        // seq 0 later than seq 5 (a higher resetCount counts as later).
        let q = vec![Ok(attest(1, 20)), Ok(attest(2, 1))];
        assert!(check_rollback(&p, &q).unwrap_err().contains("rolled back"));
        // Two quotes of one seq: the same bytes are one quote listed twice, different ones two
        // histories.
        let q = vec![Ok(attest(1, 10)), Ok(attest(1, 20))];
        assert_eq!(
            check_rollback(&parsed(vec![], vec![(3, 1), (3, 1)]), &q),
            Ok(None)
        );
        assert!(check_rollback(&parsed(vec![], vec![(3, 1), (3, 2)]), &q)
            .unwrap_err()
            .contains("both have seq 3"));
        // clockInfo.safe is not read: a TPM Reset (the only way the clock restarts lower)
        // raises resetCount, so the triple orders quotes either way.
        let mut unsafe_clock = attest(2, 1);
        unsafe_clock.clock_info.safe = false;
        assert_eq!(
            check_tpm_clock(&[Ok(attest(1, 30)), Ok(unsafe_clock)]),
            Ok(None)
        );
    }

    /// Single-byte changes all over a genuine bundle: always a verdict, never a panic, and
    /// never a pass (base64 is decoded strictly, so even padding bits count).
    #[test]
    fn altered_bytes_of_a_genuine_bundle_give_a_verdict_and_do_not_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/receipts");
        let text = std::fs::read(dir.join("cases/valid/bundle.json")).unwrap();
        let state: VerifierState = serde_json::from_slice(
            &std::fs::read(dir.join("cases/valid/verifier-state.json")).unwrap(),
        )
        .unwrap();
        let opts = ReceiptVerifyOptions {
            trust_anchors: crate::certs::parse_pem_bundle(
                &std::fs::read(dir.join("anchors/swtpm-a.pem")).unwrap(),
            )
            .unwrap(),
            allow_software_tpm: true,
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(manifest["cases"][0]["at"].as_u64().unwrap());
        assert!(verify_bundle_at(&text, &opts, &state, at).passed);
        let mut passed = 0;
        for at_byte in (0..text.len()).step_by(53) {
            for replacement in [b'A', b'0', b'"', 0xff] {
                if text[at_byte] == replacement {
                    continue;
                }
                let mut altered = text.clone();
                altered[at_byte] = replacement;
                let v = verify_bundle_at(&altered, &opts, &state, at);
                assert_eq!(v.passed, v.failed().is_empty());
                passed += usize::from(v.passed);
            }
        }
        assert_eq!(passed, 0, "altered bundles passed");
    }
}
