//! `fog-agent verify`: the auditor side, pure Rust, no TPM needed.
//!
//! - `verify enroll-challenge REQUEST --trust-anchors PEM [--allow-software-tpm] --out C`
//! - `verify enroll-finish PROOF`
//! - `verify receipts BUNDLE --trust-anchors PEM [--allow-software-tpm] [--at UNIX_SECS]
//!   [--json]`: a usage
//!   receipt bundle (`super::verify_receipts`)
//! - `verify identity REQUEST --nonce HEX [--ca-cert PEM --ca-key PEM --out CERT] [--days N]
//!   [--json]`: checks a `fog-identity-request-v1` against the enrolled AKs and, when it passes
//!   and a CA is given, issues the agent's client certificate for the TPM-resident key.
//! - `verify REPORT --nonce HEX --trust-anchors PEM [--pcrs sha256:0-7] [--allow-software-tpm]
//!   [--max-age S] [--at UNIX_SECS] [--json]`: exit 0 only when every check passes; a report
//!   that does not parse is a verdict with the one failed check `report_json`.
//!
//! The auditor's state (pending challenges with their secrets, enrolled AKs, burned nonces, last
//! clock per AK) lives in `--state-dir`, default `$XDG_DATA_HOME/fog-verifier` or
//! `~/.local/share/fog-verifier`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fog_tpm::enroll::{EnrollProof, EnrollRequest};
use fog_tpm::report::{parse_nonce_hex, parse_pcr_spec, Report};
use fog_tpm::store::{default_verifier_dir, verify_and_record, Store};
use fog_tpm::verify::{malformed_verdict, Check, Verdict, VerifyOptions};

use super::EXIT_FAILURE;

/// Trust options shared by report verification and enrollment.
#[derive(Debug, Clone, Args)]
pub struct TrustOpts {
    /// PEM file with the EK CA certificates to trust (roots and/or intermediates).
    #[arg(long, value_name = "PEM")]
    pub trust_anchors: Option<PathBuf>,
    /// Accept an EK that chains to a software-TPM CA (swtpm). For tests only; the verdict says so.
    #[arg(long)]
    pub allow_software_tpm: bool,
}

/// Arguments of `fog-agent verify`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct VerifyArgs {
    /// Enrollment steps.
    #[command(subcommand)]
    pub command: Option<VerifyCommand>,
    /// The report to verify.
    #[arg(value_name = "REPORT", required = true)]
    pub report: Option<PathBuf>,
    /// The nonce issued for this report, hex.
    #[arg(long, value_name = "HEX", required = true)]
    pub nonce: Option<String>,
    /// The expected PCR selection.
    #[arg(long, value_name = "SEL", default_value = "sha256:0-7")]
    pub pcrs: String,
    /// Reject payloads collected longer ago than this many seconds.
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,
    /// Verify as of this time (Unix seconds) instead of now: certificate validity, the
    /// payload's age and the nonce's burn time (conformance vectors, re-checking old reports).
    #[arg(long, value_name = "UNIX_SECS")]
    pub at: Option<u64>,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
    /// Trust options.
    #[command(flatten)]
    pub trust: TrustOpts,
    /// Verifier state directory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// `verify` subcommands.
#[derive(Debug, Subcommand)]
pub enum VerifyCommand {
    /// Check an enrollment request and write a credential challenge for it.
    EnrollChallenge {
        /// The request from `fog-agent attest enroll-request`.
        request: PathBuf,
        /// Where to write the challenge.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Trust options.
        #[command(flatten)]
        trust: TrustOpts,
        /// Verifier state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Verify a `fog-receipts-v1` bundle of usage receipts offline (exit 0 only when every
    /// check passes).
    Receipts {
        /// The bundle (`fog-agent client receipts JOB --out FILE`).
        bundle: PathBuf,
        /// Trust options.
        #[command(flatten)]
        trust: TrustOpts,
        /// Verifier state directory (the enrolled AKs; nothing is written).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Check certificate validity as of this time (Unix seconds) instead of now
        /// (conformance vectors, re-checking old bundles).
        #[arg(long, value_name = "UNIX_SECS")]
        at: Option<u64>,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept or reject an enrollment proof.
    EnrollFinish {
        /// The proof from `fog-agent attest activate`.
        proof: PathBuf,
        /// Verifier state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check an identity request; with a CA, issue the agent's certificate for its TPM key.
    Identity(super::verify_identity::IdentityArgs),
}

/// Runs `fog-agent verify`.
pub fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        Some(VerifyCommand::EnrollChallenge {
            request,
            out,
            trust,
            state_dir,
        }) => enroll_challenge(request, out, trust, state_dir.as_deref()),
        Some(VerifyCommand::Receipts {
            bundle,
            trust,
            state_dir,
            at,
            json,
        }) => super::verify_receipts::run(bundle, trust, state_dir.as_deref(), *at, *json),
        Some(VerifyCommand::EnrollFinish { proof, state_dir }) => {
            enroll_finish(proof, state_dir.as_deref())
        }
        Some(VerifyCommand::Identity(args)) => super::verify_identity::run(args),
        None => verify(args),
    }
}

pub(super) fn open_store(dir: Option<&Path>) -> anyhow::Result<Store> {
    let dir = dir.map_or_else(default_verifier_dir, Path::to_path_buf);
    Ok(Store::open(&dir)?)
}

pub(super) fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(super) fn options(
    trust: &TrustOpts,
    nonce: Vec<u8>,
    pcrs: &str,
    max_age: Option<u64>,
    at: Option<u64>,
) -> anyhow::Result<VerifyOptions> {
    let path = trust.trust_anchors.as_deref().context(
        "--trust-anchors PEM is required: the EK certificate must chain to a CA you trust",
    )?;
    let anchors = fog_tpm::certs::parse_pem_bundle(&read(path)?)
        .with_context(|| format!("{}", path.display()))?;
    Ok(VerifyOptions {
        nonce,
        pcrs: parse_pcr_spec(pcrs)?,
        trust_anchors: anchors,
        allow_software_tpm: trust.allow_software_tpm,
        now: at.map_or_else(SystemTime::now, |secs| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        }),
        max_age: max_age.map(Duration::from_secs),
    })
}

fn enroll_challenge(
    request: &Path,
    out: &Path,
    trust: &TrustOpts,
    state_dir: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let req = EnrollRequest::from_json(&read(request)?)?;
    let opts = options(trust, Vec::new(), "sha256:0-7", None, None)?;
    let store = open_store(state_dir)?;
    let challenge = fog_tpm::enroll::create_challenge(&store, &req, &opts)?;
    super::attest::write_json(Some(out), &challenge)?;
    Ok(ExitCode::SUCCESS)
}

fn enroll_finish(proof: &Path, state_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let proof = EnrollProof::from_json(&read(proof)?)?;
    let store = open_store(state_dir)?;
    let enrolled = fog_tpm::enroll::finish(&store, &proof, SystemTime::now())?;
    let soft = if enrolled.software_tpm {
        " (software TPM)"
    } else {
        ""
    };
    println!("enrolled: host {}{soft}", enrolled.host_id);
    Ok(ExitCode::SUCCESS)
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let path = args
        .report
        .as_deref()
        .ok_or_else(|| super::CliError::Usage("a report file is required".into()))?;
    let bytes = read(path)?;
    let nonce = parse_nonce_hex(args.nonce.as_deref().unwrap_or_default())?;
    let opts = options(&args.trust, nonce, &args.pcrs, args.max_age, args.at)?;
    let verdict = match Report::from_json(&bytes) {
        Ok(report) => verify_and_record(&open_store(args.state_dir.as_deref())?, &report, &opts)?,
        // A malformed report is a verdict too (`report_json`), not a usage error.
        Err(err) => malformed_verdict(err.to_string()),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &verdict).context("cannot write the verdict")?;
        writeln!(out).context("cannot write the verdict")?;
    } else {
        out.write_all(human(&verdict).as_bytes())
            .context("cannot write the verdict")?;
    }
    Ok(if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// One line per check: pass or FAIL, the id, and the reason (or what it establishes).
pub fn check_lines(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let mark = if c.passed { "pass" } else { "FAIL" };
        match &c.reason {
            Some(r) => s.push_str(&format!("{mark}  {:<24} {r}\n", c.id)),
            None => s.push_str(&format!("{mark}  {:<24} {}\n", c.id, c.what)),
        }
    }
    s
}

/// The verdict summary line for failed checks: `verdict: REJECTED: N failed (ids)`.
pub fn rejected_line(failed: &[&str]) -> String {
    format!(
        "verdict: REJECTED: {} failed ({})\n",
        failed.len(),
        failed.join(", ")
    )
}

/// The verdict for a terminal: one line per check, then the summary.
pub fn human(v: &Verdict) -> String {
    let mut s = check_lines(&v.checks);
    let failed = v.failed();
    if failed.is_empty() {
        let soft = if v.software_tpm {
            " (SOFTWARE TPM)"
        } else {
            ""
        };
        s.push_str(&format!("verdict: ACCEPTED{soft}: host {}\n", v.host_id));
    } else {
        s.push_str(&rejected_line(&failed));
    }
    s
}
