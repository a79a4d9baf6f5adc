//! A minimal command-line front of [`fog_tpm::receipt_verify`], with the interface the receipt
//! conformance runner calls (`tpm/conformance/run.py --suite receipts`, as `fog-agent verify receipts`):
//!
//! `verify_receipts BUNDLE --trust-anchors PEM [--allow-software-tpm] [--at UNIX_SECS]
//! [--state-dir DIR] [--json]`
//!
//! Prints the verdict (JSON with `--json`); exits 0 when the bundle passed, 1 when it did not,
//! 2 on a usage error. The verifier state is read from `DIR/verifier-state.json` and not changed.
//!
//! `python3 tpm/conformance/run.py --suite receipts -- cargo run -q -p fog-tpm --example verify_receipts --`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fog_tpm::receipt_verify::{verify_bundle_at, ReceiptVerifyOptions};
use fog_tpm::store::Store;

struct Args {
    bundle: PathBuf,
    anchors: PathBuf,
    allow_software_tpm: bool,
    at: SystemTime,
    state_dir: PathBuf,
    json: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut bundle, mut anchors, mut at, mut state_dir) = (None, None, None, None);
    let (mut allow_software_tpm, mut json) = (false, false);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--trust-anchors" => anchors = Some(PathBuf::from(value()?)),
            "--at" => {
                let secs: u64 = value()?.parse().map_err(|e| format!("--at: {e}"))?;
                at = Some(UNIX_EPOCH + Duration::from_secs(secs));
            }
            "--state-dir" => state_dir = Some(PathBuf::from(value()?)),
            "--allow-software-tpm" => allow_software_tpm = true,
            "--json" => json = true,
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path if bundle.is_none() => bundle = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    Ok(Args {
        bundle: bundle.ok_or("BUNDLE is required")?,
        anchors: anchors.ok_or("--trust-anchors is required")?,
        allow_software_tpm,
        at: at.unwrap_or_else(SystemTime::now),
        state_dir: state_dir.unwrap_or_else(fog_tpm::store::default_verifier_dir),
        json,
    })
}

fn run(args: &Args) -> Result<bool, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let opts = ReceiptVerifyOptions {
        trust_anchors: fog_tpm::certs::parse_pem_bundle(&read(&args.anchors)?)
            .map_err(|e| e.to_string())?,
        allow_software_tpm: args.allow_software_tpm,
    };
    let state = Store::open(&args.state_dir)
        .and_then(|s| s.load())
        .map_err(|e| e.to_string())?;
    let verdict = verify_bundle_at(&read(&args.bundle)?, &opts, &state, args.at);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict).map_err(|e| e.to_string())?
        );
    } else {
        for c in &verdict.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            let reason = c.reason.as_deref().unwrap_or("");
            println!("{mark} {:<20} {reason}", c.id);
        }
        println!(
            "{}: {} receipts of job {} on host {}",
            if verdict.passed { "PASSED" } else { "FAILED" },
            verdict.receipts,
            verdict.job_id,
            verdict.host_id
        );
    }
    Ok(verdict.passed)
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("verify_receipts: {e}");
            ExitCode::from(2)
        }
    }
}
