//! `fog-agent verify receipts BUNDLE --trust-anchors PEM [--allow-software-tpm]
//! [--state-dir DIR] [--at UNIX_SECS] [--json]`: checks a `fog-receipts-v1` bundle offline
//! (`fog_tpm::receipt_verify`): the EK chain, the AK enrolled in the verifier's state dir, the
//! identity key's certification, every receipt's signature, the chain (no gap, reordering or
//! fork), counters never decreasing, the quotes' binding, the TPM clock, and no rollback. Exit 0
//! only when every check passes; a bundle that does not parse is a verdict with the one failed
//! check `bundle_json`. Nothing is recorded in the state dir (the AKs enrolled there are read).

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use fog_tpm::receipt_verify::{verify_bundle_at, ReceiptVerdict, ReceiptVerifyOptions};

use super::verify::{check_lines, open_store, rejected_line, TrustOpts};
use super::EXIT_FAILURE;

/// Runs `verify receipts`.
pub fn run(
    bundle: &Path,
    trust: &TrustOpts,
    state_dir: Option<&Path>,
    at: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    let path = trust.trust_anchors.as_deref().context(
        "--trust-anchors PEM is required: the EK certificate must chain to a CA you trust",
    )?;
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let anchors =
        fog_tpm::certs::parse_pem_bundle(&pem).with_context(|| format!("{}", path.display()))?;
    let opts = ReceiptVerifyOptions {
        trust_anchors: anchors,
        allow_software_tpm: trust.allow_software_tpm,
    };
    let state = open_store(state_dir)?.load()?;
    let now = at.map_or_else(SystemTime::now, |secs| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    });
    let verdict = verify_bundle_at(&text, &opts, &state, now);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &verdict).context("cannot write the verdict")?;
        writeln!(out).context("cannot write the verdict")?;
    } else {
        out.write_all(human(&verdict).as_bytes())
            .context("cannot write the verdict")?;
    }
    Ok(if verdict.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// The verdict for a terminal: one line per check, the last receipt's usage, then the summary.
pub fn human(v: &ReceiptVerdict) -> String {
    let mut s = check_lines(&v.checks);
    if let Some(u) = &v.usage {
        s.push_str(&format!(
            "usage: run {} ms, cpu {} ns, memory {} MiB·ms (peak {} bytes), net in {} / out {} bytes, disk peak {} bytes, GPUs {}\n",
            u.run_millis,
            u.cpu_nanos,
            u.memory_mib_millis,
            u.memory_peak_bytes,
            u.net_in_bytes,
            u.net_out_bytes,
            u.disk_peak_bytes,
            if u.gpu_millis.is_empty() {
                "none".to_owned()
            } else {
                u.gpu_millis
                    .iter()
                    .map(|(gpu, ms)| format!("{gpu} {ms} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    let failed = v.failed();
    if failed.is_empty() {
        s.push_str(&format!(
            "verdict: ACCEPTED: job {} on host {}, {} receipts\n",
            v.job_id, v.host_id, v.receipts
        ));
    } else {
        s.push_str(&rejected_line(&failed));
    }
    s
}
