//! The `fog-receipts-v1` conformance cases (`tpm/conformance/receipts`), made on two swtpms: a
//! genuine bundle and one altered copy per tamper class and per check, each with the verdict
//! `RECEIPTS.md` prescribes (written here by hand). The conformance example writes them; the
//! swtpm integration tests verify them directly.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::receipts::{BuildError, JobChain, ReceiptHost};
use super::Swtpm;
use crate::device::Tpm;
use crate::receipt::{ReceiptBundle, ReceiptKind};
use crate::receipt_verify::{verify_bundle_at, ReceiptVerdict, ReceiptVerifyOptions};
use crate::store::{Store, VerifierState};

/// The host id of the genuine bundles.
pub const HOST: &str = "host-a";
/// The job of the genuine bundle.
pub const JOB: &str = "job-a";

/// One vector: a bundle (as text, so malformed ones can be written), how to verify it and the
/// verdict the document prescribes.
#[derive(Debug, Clone)]
pub struct Case {
    /// Stable id (a directory name).
    pub id: &'static str,
    /// What was altered.
    pub description: &'static str,
    /// The bundle text.
    pub bundle: Vec<u8>,
    /// The auditor's state (enrolled AKs).
    pub state: VerifierState,
    /// Trust anchors: `swtpm-a.pem` (the TPM that made the bundles) or `swtpm-b.pem`.
    pub anchors: &'static str,
    /// Whether a software TPM's EK is accepted.
    pub allow_software_tpm: bool,
    /// The ids of the failed checks, in verdict order (empty: accepted).
    pub failed: Vec<&'static str>,
}

/// The TPMs, trust anchors and time the cases are made with.
#[derive(Debug)]
pub struct World {
    _swtpm_a: Swtpm,
    _swtpm_b: Swtpm,
    /// The CA of TPM A (which made the bundles), PEM.
    pub anchors_a: Vec<u8>,
    /// The CA of TPM B, PEM.
    pub anchors_b: Vec<u8>,
    /// When the bundles were made.
    pub made_at: SystemTime,
}

impl World {
    /// The trust anchors a case names.
    pub fn anchors(&self, name: &str) -> &[u8] {
        if name == "swtpm-a.pem" {
            &self.anchors_a
        } else {
            &self.anchors_b
        }
    }

    /// When the cases are verified: a minute after they were made.
    pub fn verify_at(&self) -> SystemTime {
        self.made_at + Duration::from_secs(60)
    }

    /// [`Self::verify_at`] in Unix seconds.
    pub fn verify_at_unix(&self) -> u64 {
        self.verify_at()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// This crate's verdict on `case`.
    pub fn verdict(&self, case: &Case) -> Result<ReceiptVerdict, BuildError> {
        let opts = ReceiptVerifyOptions {
            trust_anchors: crate::certs::parse_pem_bundle(self.anchors(case.anchors))?,
            allow_software_tpm: case.allow_software_tpm,
        };
        Ok(verify_bundle_at(
            &case.bundle,
            &opts,
            &case.state,
            self.verify_at(),
        ))
    }
}

fn json(bundle: &ReceiptBundle) -> Vec<u8> {
    bundle.to_json()
}

/// Makes the TPMs and every case.
#[allow(clippy::too_many_lines)]
pub fn build() -> Result<(World, Vec<Case>), BuildError> {
    let swtpm_a = Swtpm::start()?;
    let swtpm_b = Swtpm::start()?;
    let mut a = ReceiptHost::new(Tpm::open(&swtpm_a.tcti())?, HOST)?;
    let b = ReceiptHost::new(Tpm::open(&swtpm_b.tcti())?, "host-b")?;
    let anchors_a = swtpm_a.trust_anchors_pem()?;
    let anchors_b = swtpm_b.trust_anchors_pem()?;
    let made_at = SystemTime::now();
    let auditor = tempfile::tempdir()?;
    let store = Store::open(auditor.path())?;
    a.enroll(&store, &anchors_a, made_at)?;
    let state = store.load()?;
    let start = made_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);

    // Three jobs on host A, their receipts quoted together as the agent does:
    // Q0 [a0 a1 f0 f1], Q1 [a2 b0 f2 f2'], Q2 [a3 a4 b1 f3].
    let mut job_a = JobChain::new(&a, JOB, start);
    let mut job_b = JobChain::new(&a, "job-b", start + 1000);
    let mut job_f = JobChain::new(&a, "job-f", start + 2000);
    let mut q0 = vec![
        job_a.issue(&a, ReceiptKind::Start)?,
        job_a.issue(&a, ReceiptKind::Periodic)?,
    ];
    q0.push(job_f.issue(&a, ReceiptKind::Start)?);
    q0.push(job_f.issue(&a, ReceiptKind::Periodic)?);
    let quote0 = a.quote(&q0)?;
    let before_q1 = a.quotes;
    let mut q1 = vec![
        job_a.issue(&a, ReceiptKind::Periodic)?,
        job_b.issue(&a, ReceiptKind::Start)?,
    ];
    // The fork: two different receipts 2 of job-f, both signed and quoted.
    let mut fork = job_f.next_body(ReceiptKind::Periodic);
    fork.usage.cpu_nanos += 1;
    let fork = a.sign(&fork)?;
    q1.push(job_f.issue(&a, ReceiptKind::Periodic)?);
    q1.push(fork.digest());
    let quote1 = a.quote(&q1)?;
    let mut q2 = vec![job_a.issue(&a, ReceiptKind::End)?];
    // A periodic receipt after job-a's end (only in the receipt-after-end case).
    let mut after_end = job_a.clone();
    q2.push(after_end.issue(&a, ReceiptKind::Periodic)?);
    q2.push(job_b.issue(&a, ReceiptKind::End)?);
    q2.push(job_f.issue(&a, ReceiptKind::End)?);
    let quote2 = a.quote(&q2)?;

    // Foreign key: job-a's receipts naming and signed by TPM B's identity key, quoted by A.
    let mut foreign = JobChain::new(&b, JOB, start);
    foreign.host_id = HOST.into();
    let mut fq = Vec::new();
    for kind in [
        ReceiptKind::Start,
        ReceiptKind::Periodic,
        ReceiptKind::Periodic,
        ReceiptKind::End,
    ] {
        fq.push(foreign.issue(&b, kind)?);
    }
    let foreign_quote = a.quote(&fq)?;

    // Rollback: the agent's database restored to just after Q0; receipt 2 and 3 of job-a
    // issued again (other figures) and quoted again from seq 1.
    let mut rolled = job_a.clone();
    rolled.bodies.truncate(2);
    rolled.receipts.truncate(2);
    let mut r2 = rolled.next_body(ReceiptKind::Periodic);
    r2.usage.cpu_nanos -= 1000;
    let r2 = a.sign(&r2)?;
    rolled
        .bodies
        .push(crate::receipt::ReceiptBody::from_bytes(&r2.body)?);
    rolled.receipts.push(r2.clone());
    let r3 = rolled.issue(&a, ReceiptKind::End)?;
    let current = a.quotes;
    a.quotes = before_q1;
    let quote1_again = a.quote(&[r2.digest()])?;
    let quote2_again = a.quote(&[r3])?;
    a.quotes = current;

    let genuine = a.bundle(
        JOB,
        job_a.receipts.clone(),
        vec![quote0.clone(), quote1.clone(), quote2.clone()],
    );
    let case = |id, description, bundle: &ReceiptBundle, failed: &[&'static str]| Case {
        id,
        description,
        bundle: json(bundle),
        state: state.clone(),
        anchors: "swtpm-a.pem",
        allow_software_tpm: true,
        failed: failed.to_vec(),
    };
    let mut cases = vec![case(
        "valid",
        "genuine bundle: job-a's start, two periodic and end receipts over three quotes",
        &genuine,
        &[],
    )];
    cases.push(case(
        "valid-other-job",
        "genuine bundle of job-b: quotes 1 and 2 of the host's chain (not from seq 0)",
        &a.bundle(
            "job-b",
            job_b.receipts.clone(),
            vec![quote1.clone(), quote2.clone()],
        ),
        &[],
    ));

    let mut x = genuine.clone();
    let mut body = crate::receipt::ReceiptBody::from_bytes(&x.receipts[3].body)?;
    body.usage.cpu_nanos += 1_000_000_000;
    x.receipts[3].body = body.to_bytes();
    cases.push(case(
        "changed-counter",
        "the end receipt's cpu_nanos raised by one second (signature kept)",
        &x,
        &["receipt_signature", "quote_binding"],
    ));

    let mut x = genuine.clone();
    x.receipts.remove(2);
    cases.push(case(
        "dropped-receipt",
        "receipt seq 2 removed",
        &x,
        &["chain_gap"],
    ));

    let mut x = genuine.clone();
    x.receipts.swap(1, 2);
    cases.push(case(
        "reordered",
        "receipts seq 1 and 2 swapped",
        &x,
        &["chain_order"],
    ));

    let mut receipts = job_f.receipts.clone();
    receipts.insert(3, fork);
    cases.push(case(
        "forked-chain",
        "job-f with two different signed and quoted receipts of seq 2",
        &a.bundle(
            "job-f",
            receipts,
            vec![quote0.clone(), quote1.clone(), quote2.clone()],
        ),
        &["chain_fork"],
    ));

    cases.push(case(
        "replayed-into-other-job",
        "job-b's receipts and quotes presented as job-a's",
        &a.bundle(
            JOB,
            job_b.receipts.clone(),
            vec![quote1.clone(), quote2.clone()],
        ),
        &["job_binding"],
    ));

    cases.push(case(
        "foreign-key",
        "receipts naming and signed by another TPM's identity key (quoted by the AK)",
        &a.bundle(JOB, foreign.receipts.clone(), vec![foreign_quote]),
        &["receipt_key", "receipt_signature"],
    ));

    cases.push(case(
        "rollback-same-seq",
        "database rolled back after quote 0: receipts 2-3 and quotes 1-2 issued again; the old quote 1 is known",
        &a.bundle(
            JOB,
            rolled.receipts.clone(),
            vec![quote0.clone(), quote1.clone(), quote1_again.clone(), quote2_again],
        ),
        &["rollback"],
    ));
    let mut x = a.bundle(
        JOB,
        rolled.receipts[..3].to_vec(),
        vec![quote0.clone(), quote2.clone(), quote1_again],
    );
    x.receipts.truncate(3);
    cases.push(case(
        "rollback-later-clock",
        "database rolled back: the re-issued quote 1 is later than the known old quote 2",
        &x,
        &["quote_binding", "rollback"],
    ));

    let mut x = genuine.clone();
    let last = x.identity.certify_signature.len() - 1;
    x.identity.certify_signature[last] ^= 1;
    cases.push(case(
        "bad-certify",
        "one bit of the certification's signature flipped",
        &x,
        &["identity_certified"],
    ));

    let mut c = case(
        "unenrolled-ak",
        "the verifier state knows no AK",
        &genuine,
        &["ak_enrolled"],
    );
    c.state = VerifierState::default();
    cases.push(c);

    let mut x = genuine.clone();
    x.host_id = "host-z".into();
    cases.push(case(
        "wrong-host-id",
        "the bundle claims host-z; the AK was enrolled for host-a",
        &x,
        &["ak_enrolled"],
    ));

    let mut c = case(
        "ek-untrusted-anchor",
        "the EK certificate does not chain to the configured anchors",
        &genuine,
        &["ek_chain"],
    );
    c.anchors = "swtpm-b.pem";
    cases.push(c);
    let mut c = case(
        "ek-software-not-allowed",
        "a software TPM's EK without --allow-software-tpm",
        &genuine,
        &["ek_chain"],
    );
    c.allow_software_tpm = false;
    cases.push(c);

    cases.push(case(
        "receipt-after-end",
        "a signed and quoted periodic receipt after the end receipt",
        &a.bundle(
            JOB,
            after_end.receipts.clone(),
            vec![quote0.clone(), quote1.clone(), quote2.clone()],
        ),
        &["chain_end"],
    ));

    let mut x = genuine.clone();
    let last = x.quotes[1].signature.len() - 1;
    x.quotes[1].signature[last] ^= 1;
    cases.push(case(
        "quote-signature-flipped",
        "one bit of quote 1's signature flipped",
        &x,
        &["quote_signature"],
    ));

    let mut x = genuine.clone();
    x.quotes.pop();
    cases.push(case(
        "receipt-unquoted",
        "the quote covering the end receipt left out",
        &x,
        &["quote_binding"],
    ));

    let mut x = genuine.clone();
    x.quotes.swap(0, 1);
    cases.push(case(
        "quotes-out-of-clock-order",
        "quotes 0 and 1 listed the other way round",
        &x,
        &["tpm_clock"],
    ));

    let text = String::from_utf8(json(&genuine))?;
    let malformed: Vec<(&'static str, &'static str, Vec<u8>)> = vec![
        (
            "malformed-json",
            "the bundle is not JSON",
            b"{\"format\": \"fog-receipts-v1\",".to_vec(),
        ),
        (
            "duplicate-member",
            "job_id given twice in the bundle object (the same value)",
            text.replacen("\"job_id\":", "\"job_id\": \"job-a\",\n  \"job_id\":", 1)
                .into_bytes(),
        ),
        (
            "format-changed",
            "the bundle format is fog-receipts-v2",
            text.replacen("fog-receipts-v1", "fog-receipts-v2", 1)
                .into_bytes(),
        ),
    ];
    for (id, description, bundle) in malformed {
        let mut c = case(id, description, &genuine, &["bundle_json"]);
        c.bundle = bundle;
        cases.push(c);
    }
    Ok((
        World {
            _swtpm_a: swtpm_a,
            _swtpm_b: swtpm_b,
            anchors_a,
            anchors_b,
            made_at,
        },
        cases,
    ))
}
