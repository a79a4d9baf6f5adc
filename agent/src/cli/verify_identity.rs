//! `fog-agent verify identity REQUEST --nonce HEX [--state-dir DIR] [--ca-cert PEM --ca-key PEM
//! --out CERT] [--days N] [--json]`: the CA side of the identity key. Checks the request against
//! the verifier state's enrolled AKs (`IDENTITY.md`); when every check passes and a CA is given,
//! writes the agent's client certificate for the TPM-resident key (`fog://agent/<host_id>`).
//! Exit 0 only when the request passes (and the certificate, if asked for, was written).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use fog_tpm::identity_request::{verify_request, IdentityVerdict};
use fog_tpm::report::parse_nonce_hex;

use super::verify::{check_lines, open_store, read, rejected_line};
use super::EXIT_FAILURE;

/// Arguments of `fog-agent verify identity`.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The request from `fog-agent attest identity-request`.
    pub request: PathBuf,
    /// The nonce issued for this request, hex.
    #[arg(long, value_name = "HEX")]
    pub nonce: String,
    /// Verifier state directory (the enrolled AKs).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The CA certificate (PEM) to issue the agent's certificate under.
    #[arg(long, value_name = "PEM", requires_all = ["ca_key", "out"])]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM, PKCS#8).
    #[arg(long, value_name = "PEM", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Where to write the issued certificate (PEM).
    #[arg(long, value_name = "CERT", requires = "ca_cert")]
    pub out: Option<PathBuf>,
    /// Validity of the issued certificate, days.
    #[arg(long, value_name = "N", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `fog-agent verify identity`.
pub fn run(args: &IdentityArgs) -> anyhow::Result<ExitCode> {
    let nonce = parse_nonce_hex(&args.nonce)?;
    let text = read(&args.request)?;
    let state = open_store(args.state_dir.as_deref())?.load()?;
    let verdict = verify_request(&text, &nonce, &state);
    let issued = match (&verdict, &args.ca_cert, &args.ca_key, &args.out) {
        (v, Some(ca_cert), Some(ca_key), Some(out)) if v.ok => {
            Some(issue(v, ca_cert, ca_key, out, args.days)?)
        }
        _ => None,
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &verdict).context("cannot write the verdict")?;
        writeln!(stdout).context("cannot write the verdict")?;
    } else {
        stdout
            .write_all(human(&verdict, issued.as_ref()).as_bytes())
            .context("cannot write the verdict")?;
    }
    Ok(if verdict.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

fn issue(
    verdict: &IdentityVerdict,
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    out: &std::path::Path,
    days: u32,
) -> anyhow::Result<PathBuf> {
    let point = verdict
        .key_point
        .as_deref()
        .context("the verdict carries no key")?;
    let text = |path: &std::path::Path| -> anyhow::Result<String> {
        String::from_utf8(read(path)?)
            .with_context(|| format!("{} is not PEM text", path.display()))
    };
    let pem = crate::api::tls::issue_agent_certificate(
        &text(ca_cert)?,
        &text(ca_key)?,
        &verdict.host_id,
        point,
        days,
    )
    .with_context(|| format!("cannot issue a certificate under {}", ca_cert.display()))?;
    std::fs::write(out, pem).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out.to_path_buf())
}

fn human(v: &IdentityVerdict, issued: Option<&PathBuf>) -> String {
    let mut s = check_lines(&v.checks);
    let failed = v.failed();
    if failed.is_empty() {
        s.push_str(&format!(
            "verdict: ACCEPTED: host {}, identity key {}\n",
            v.host_id,
            v.key_name.as_deref().unwrap_or("?")
        ));
        if let Some(path) = issued {
            s.push_str(&format!(
                "certificate for fog://agent/{} written to {}\n",
                v.host_id,
                path.display()
            ));
        }
    } else {
        s.push_str(&rejected_line(&failed));
    }
    s
}
