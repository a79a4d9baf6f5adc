//! `fog-agent attest`: the agent side of TPM attestation.
//!
//! - `attest enroll-request [--tcti T] [--out F]`: creates the AK on first use (blob in the
//!   state dir) and writes the enrollment request (EK public, EK certificate and chain, AK public).
//! - `attest activate CHALLENGE [--tcti T] [--out F]`: ActivateCredential; writes the proof.
//! - `attest identity-request --nonce HEX [--tcti T] [--out F]`: creates the TPM-resident
//!   identity key on first use and writes a `fog-identity-request-v1` (a CSR signed in the TPM
//!   and the AK's certification of the key over the CA's nonce) for `verify identity`.
//! - `attest --nonce HEX [--tcti T] [--out report.json] [--pcrs sha256:0-7]
//!   [--export-tpm2-tools DIR]`: a `fog-attest-v1` report over the current inventory and the
//!   cached benchmark results.
//!
//! Without a TPM every subcommand fails with one line naming the TCTI tried; nothing else in the
//! agent needs a TPM.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use fog_tpm::ak::{AkAlg, AkBlob, AkStateError, EkAlg};
use fog_tpm::device::Tpm;
use fog_tpm::report::{parse_nonce_hex, parse_pcr_spec};
use fog_tpm::tcti::{Tcti, DEFAULT_TCTI};

use crate::fsroot::FsRoot;

/// Default agent state directory (holds `ak.json`).
pub const DEFAULT_AGENT_STATE_DIR: &str = "/var/lib/fog-agent";

/// Options shared by every `attest` form.
#[derive(Debug, Clone, Args)]
pub struct TpmOpts {
    /// How to reach the TPM: device:/dev/tpmrm0, swtpm:host=H,port=P or mssim:host=H,port=P.
    #[arg(long, value_name = "TCTI", default_value = DEFAULT_TCTI)]
    pub tcti: Tcti,
    /// Agent state directory (the AK blob lives here).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_AGENT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// AK algorithm on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AkAlgArg {
    /// RSA-2048, RSASSA-SHA256.
    Rsa,
    /// ECC P-256, ECDSA-SHA256.
    Ecc,
}

/// Arguments of `fog-agent attest`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AttestArgs {
    /// Enrollment steps.
    #[command(subcommand)]
    pub command: Option<AttestCommand>,
    /// The auditor's nonce, hex (8 to 64 bytes).
    #[arg(long, value_name = "HEX", required = true)]
    pub nonce: Option<String>,
    /// PCRs to quote.
    #[arg(long, value_name = "SEL", default_value = "sha256:0-7")]
    pub pcrs: String,
    /// Write the report here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write quote.msg, quote.sig, ak.pub.pem and pcrs.bin for `tpm2_checkquote`.
    #[arg(long, value_name = "DIR")]
    pub export_tpm2_tools: Option<PathBuf>,
    /// TPM and state options.
    #[command(flatten)]
    pub tpm: TpmOpts,
}

/// `attest` subcommands.
#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Write an enrollment request (creates the AK on first use).
    EnrollRequest {
        /// Write the request here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// AK algorithm when creating it.
        #[arg(long, value_enum, default_value = "rsa")]
        ak_alg: AkAlgArg,
        /// Host id to enroll (default: /etc/machine-id).
        #[arg(long)]
        host_id: Option<String>,
        /// TPM and state options.
        #[command(flatten)]
        tpm: TpmOpts,
    },
    /// Activate an enrollment challenge and write the proof.
    Activate {
        /// The challenge file from `fog-agent verify enroll-challenge`.
        challenge: PathBuf,
        /// Write the proof here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// TPM and state options.
        #[command(flatten)]
        tpm: TpmOpts,
    },
    /// Write an identity request for the CA's nonce (creates the identity key on first use).
    IdentityRequest {
        /// The CA's nonce, hex (8 to 64 bytes).
        #[arg(long, value_name = "HEX")]
        nonce: String,
        /// Write the request here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// TPM and state options.
        #[command(flatten)]
        tpm: TpmOpts,
    },
}

/// Runs `fog-agent attest`.
pub fn run(args: &AttestArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        Some(AttestCommand::EnrollRequest {
            out,
            ak_alg,
            host_id,
            tpm,
        }) => enroll_request(tpm, *ak_alg, host_id.as_deref(), out.as_deref()),
        Some(AttestCommand::Activate {
            challenge,
            out,
            tpm,
        }) => activate(tpm, challenge, out.as_deref()),
        Some(AttestCommand::IdentityRequest { nonce, out, tpm }) => {
            identity_request(tpm, nonce, out.as_deref())
        }
        None => report(args),
    }
}

/// Opens the TPM, keeping libtss2's own error logging quiet (our error names the TCTI).
fn open_tpm(opts: &TpmOpts) -> anyhow::Result<Tpm> {
    if std::env::var_os("TSS2_LOG").is_none() {
        // Single-threaded at this point (the CLI has not started any thread).
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    Ok(Tpm::open(&opts.tcti)?)
}

fn enroll_request(
    opts: &TpmOpts,
    alg: AkAlgArg,
    host_id: Option<&str>,
    out: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let tpm = open_tpm(opts)?;
    let ak = match AkBlob::load(&opts.state_dir) {
        Ok(ak) => ak,
        Err(AkStateError::Missing(_)) => {
            let host_id = match host_id {
                Some(h) => h.to_string(),
                None => default_host_id()?,
            };
            let alg = match alg {
                AkAlgArg::Rsa => AkAlg::Rsa,
                AkAlgArg::Ecc => AkAlg::Ecc,
            };
            let ak = tpm.create_ak(alg, EkAlg::Rsa, &host_id)?;
            ak.save(&opts.state_dir)?;
            ak
        }
        Err(e) => return Err(e.into()),
    };
    let req = tpm.enroll_request(&ak)?;
    write_json(out, &req)?;
    Ok(ExitCode::SUCCESS)
}

fn activate(opts: &TpmOpts, challenge: &Path, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(challenge).with_context(|| format!("cannot read {}", challenge.display()))?;
    let challenge = fog_tpm::enroll::EnrollChallenge::from_json(&bytes)?;
    let ak = AkBlob::load(&opts.state_dir)?;
    let tpm = open_tpm(opts)?;
    let secret = tpm
        .activate_credential(&ak, &challenge.credential_blob, &challenge.encrypted_secret)
        .context(
            "credential activation failed: the challenge was not made for this TPM's EK and AK",
        )?;
    write_json(out, &fog_tpm::enroll::make_proof(&challenge, &secret))?;
    Ok(ExitCode::SUCCESS)
}

fn identity_request(opts: &TpmOpts, nonce: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let nonce = parse_nonce_hex(nonce)?;
    // The AK must exist (and be enrolled with the CA) before its certification means anything.
    AkBlob::load(&opts.state_dir)?;
    open_tpm(opts)?;
    let identity = crate::attest::TpmIdentity::new(opts.tcti.clone(), opts.state_dir.clone());
    let request = identity.request(&nonce)?;
    write_json(out, &request)?;
    Ok(ExitCode::SUCCESS)
}

fn report(args: &AttestArgs) -> anyhow::Result<ExitCode> {
    let nonce = parse_nonce_hex(args.nonce.as_deref().unwrap_or_default())?;
    let selection = parse_pcr_spec(&args.pcrs)?;
    let ak = AkBlob::load(&args.tpm.state_dir)?;
    let tpm = open_tpm(&args.tpm)?;
    let inventory = crate::inventory::collect_from(FsRoot::host());
    let payload = crate::attest::payload::build_with_cached_benchmarks(
        &args.tpm.state_dir,
        &ak.host_id,
        &nonce,
        &inventory,
    )?;
    let report = tpm.attest(&ak, &nonce, payload, &selection)?;
    if let Some(dir) = &args.export_tpm2_tools {
        let q = fog_tpm::export::export_tpm2_tools(&report, dir)?;
        eprintln!(
            "tpm2-tools files in {}; check with: tpm2_checkquote -u ak.pub.pem -m quote.msg -s quote.sig -f pcrs.bin -g sha256 -q {q}",
            dir.display()
        );
    }
    write_json(args.out.as_deref(), &report)?;
    Ok(ExitCode::SUCCESS)
}

/// The host id: `/etc/machine-id`.
fn default_host_id() -> anyhow::Result<String> {
    let id = std::fs::read_to_string("/etc/machine-id")
        .context("cannot read /etc/machine-id; pass --host-id")?;
    let id = id.trim();
    anyhow::ensure!(!id.is_empty(), "/etc/machine-id is empty; pass --host-id");
    Ok(id.to_string())
}

/// Writes pretty JSON to `out` or stdout.
pub(crate) fn write_json<T: serde::Serialize>(out: Option<&Path>, value: &T) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).context("cannot serialize")?;
    bytes.push(b'\n');
    match out {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
        }
        None => std::io::stdout()
            .lock()
            .write_all(&bytes)
            .context("cannot write to stdout"),
    }
}
