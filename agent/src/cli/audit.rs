//! `fog-agent audit`: a remote audit in one command. For each agent: GetEnrollment; when the
//! verifier state does not know its AK (under that EK, for that host), enrollment by credential
//! activation (a challenge made here, ActivateCredential on the agent's TPM, the proof checked
//! here); then GetAttestation over a fresh 32-byte nonce from the OS's random source, and the
//! report verified and recorded (`fog_tpm::store::verify_and_record`, as `fog-agent verify`
//! does). `--targets FILE` audits many agents concurrently, with a progress bar on stderr and a
//! summary table naming, per host, the verdict, the failed checks and the PCRs whose values
//! changed since that host's last accepted audit (kept in `<state dir>/audit-pcrs.json`).
//!
//! The verifier state is one file read and written whole, so the state steps of concurrent
//! audits (challenge, finish, verify) take one lock; the network steps run in parallel.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use clap::Args;
use fog_proto::v1 as pb;
use fog_proto::v1::agent_client::AgentClient;
use fog_tpm::enroll::{self, EnrollProof, EnrollRequest, PROOF_FORMAT, REQUEST_FORMAT};
use fog_tpm::report::{parse_pcr_spec, PcrValues, Report};
use fog_tpm::store::{verify_and_record, Store};
use fog_tpm::structures::{HashAlg, Public};
use fog_tpm::verify::{malformed_verdict, Verdict, VerifyOptions};
use serde::Serialize;

use super::client::{connect_tls, TlsFiles};
use super::verify::{human, open_store, options, TrustOpts};
use super::{CliError, EXIT_FAILURE};

/// The file, in the verifier's state dir, of each host's PCR values at its last accepted audit.
const PCR_HISTORY_FILE: &str = "audit-pcrs.json";
/// Length of the report nonce.
const NONCE_LEN: usize = 32;

/// Arguments of `fog-agent audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The agent to audit: `https://HOST:PORT`.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "targets",
        required_unless_present = "targets"
    )]
    pub addr: Option<String>,
    /// Audit every agent listed in FILE (one `https://HOST:PORT` per line; `#` starts a
    /// comment), concurrently.
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
    /// CA that signed the agents' server certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: PathBuf,
    /// Client certificate (PEM) with the auditor (or admin) role.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Trust options (the EK CAs).
    #[command(flatten)]
    pub trust: TrustOpts,
    /// The PCRs to quote and expect (one bank: `sha256:0-7`, `sha384:0,2,4-7`).
    #[arg(long, value_name = "SEL", default_value = "sha256:0-7")]
    pub pcrs: String,
    /// Reject payloads collected longer ago than this many seconds.
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,
    /// Verifier state directory (enrolled AKs, burned nonces, clocks, PCR history).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Most agents audited at once with `--targets`.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,
    /// Print JSON: one audit object (`--addr`) or an array of them (`--targets`).
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one agent's audit.
#[derive(Debug, Serialize)]
pub struct HostAudit {
    /// The agent's address.
    pub target: String,
    /// Whether the report passed every check.
    pub ok: bool,
    /// The host id the agent reported (empty when it was not reached).
    pub host_id: String,
    /// Whether its AK was enrolled by this audit.
    pub enrolled_now: bool,
    /// PCRs (`sha256:7`) whose values differ from the host's last accepted audit.
    pub changed_pcrs: Vec<String>,
    /// The verdict, when a report was received.
    pub verdict: Option<Verdict>,
    /// Why there is no verdict (connection, RPC or enrollment failure).
    pub error: Option<String>,
}

/// What every audit of one run shares.
struct Audit {
    tls: tonic::transport::ClientTlsConfig,
    options: VerifyOptions,
    selection: pb::PcrSelection,
    store: Store,
    /// Serializes the steps that read and write the verifier state.
    state_lock: Mutex<()>,
}

/// Runs `fog-agent audit`.
pub fn run(args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let targets = match (&args.addr, &args.targets) {
        (Some(addr), _) => vec![addr.clone()],
        (None, Some(file)) => read_targets(file)?,
        (None, None) => bail!(CliError::Usage("--addr or --targets is required".into())),
    };
    let selection = proto_selection(&args.pcrs)?;
    let options = options(&args.trust, Vec::new(), &args.pcrs, args.max_age, None)?;
    let files = TlsFiles {
        ca: Some(args.ca.clone()),
        cert: Some(args.cert.clone()),
        key: Some(args.key.clone()),
    };
    let audit = Arc::new(Audit {
        tls: files.read(&targets[0])?,
        options,
        selection,
        store: open_store(args.state_dir.as_deref())?,
        state_lock: Mutex::new(()),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let audits = runtime.block_on(audit_all(&audit, targets, usize::from(args.concurrency)));
    let all_ok = audits.iter().all(|a| a.ok);
    let mut out = std::io::stdout().lock();
    let text = match (args.json, args.addr.is_some()) {
        (true, true) => serde_json::to_string_pretty(&audits[0])?,
        (true, false) => serde_json::to_string_pretty(&audits)?,
        (false, true) => human_one(&audits[0]),
        (false, false) => summary(&audits),
    };
    writeln!(out, "{}", text.trim_end()).context("cannot write the audit")?;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURE)
    })
}

/// The targets file: one address per line, `#` comments, blank lines skipped.
fn read_targets(file: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let targets: Vec<String> = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!(CliError::Usage(format!(
            "--targets {}: no address in it",
            file.display()
        )));
    }
    Ok(targets)
}

/// `--pcrs` as GetAttestation's selection (one bank: the RPC quotes one).
fn proto_selection(spec: &str) -> anyhow::Result<pb::PcrSelection> {
    let parsed = parse_pcr_spec(spec)?;
    let [bank] = parsed.banks.as_slice() else {
        bail!(CliError::Usage(format!(
            "--pcrs {spec}: an audit quotes one bank"
        )));
    };
    let bank_enum = match HashAlg::from_tpm(bank.hash) {
        Some(HashAlg::Sha256) => pb::PcrBank::Sha256,
        Some(HashAlg::Sha384) => pb::PcrBank::Sha384,
        _ => bail!(CliError::Usage(format!(
            "--pcrs {spec}: agents quote sha256 or sha384"
        ))),
    };
    Ok(pb::PcrSelection {
        bank: bank_enum.into(),
        pcrs: bank.indices(),
    })
}

/// Audits every target, at most `concurrency` at once, with a progress bar for more than one.
async fn audit_all(audit: &Arc<Audit>, targets: Vec<String>, concurrency: usize) -> Vec<HostAudit> {
    let progress = (targets.len() > 1).then(|| {
        let bar = indicatif::ProgressBar::new(targets.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} audited, {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.iter().cloned().enumerate() {
        let (audit, permits, progress) = (audit.clone(), permits.clone(), progress.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = audit_one(&audit, &target).await;
            if let Some(bar) = &progress {
                bar.inc(1);
            }
            (index, result)
        });
    }
    let mut audits: Vec<Option<HostAudit>> = targets.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        if let Ok((index, audit)) = joined {
            audits[index] = Some(audit);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    audits
        .into_iter()
        .zip(targets)
        .map(|(audit, target)| {
            audit.unwrap_or_else(|| failed(target, "the audit task panicked".into()))
        })
        .collect()
}

fn failed(target: String, error: String) -> HostAudit {
    HostAudit {
        target,
        ok: false,
        host_id: String::new(),
        enrolled_now: false,
        changed_pcrs: Vec::new(),
        verdict: None,
        error: Some(error),
    }
}

/// One agent's audit; every failure becomes the audit's `error`.
async fn audit_one(audit: &Audit, target: &str) -> HostAudit {
    match try_audit(audit, target).await {
        Ok(done) => done,
        Err(err) => failed(
            target.to_owned(),
            err.chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": "),
        ),
    }
}

async fn try_audit(audit: &Audit, target: &str) -> anyhow::Result<HostAudit> {
    let channel = connect_tls(target, &audit.tls).await?;
    let mut client = AgentClient::new(channel).max_decoding_message_size(64 << 20);
    let enrollment = client
        .get_enrollment(pb::GetEnrollmentRequest {})
        .await
        .context("GetEnrollment failed")?
        .into_inner()
        .enrollment
        .context("GetEnrollment answered no enrollment")?;
    let host_id = enrollment.host_id.clone();
    let enrolled_now = ensure_enrolled(audit, &mut client, enrollment).await?;
    let mut nonce = vec![0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).context("cannot draw a nonce")?;
    let report = client
        .get_attestation(pb::GetAttestationRequest {
            nonce: nonce.clone(),
            pcr_selection: Some(audit.selection.clone()),
        })
        .await
        .context("GetAttestation failed")?
        .into_inner()
        .report
        .context("GetAttestation answered no report")?;
    let options = VerifyOptions {
        nonce,
        now: SystemTime::now(),
        ..audit.options.clone()
    };
    let (verdict, changed_pcrs) = match Report::from_json(&report.report_json) {
        Ok(report) => {
            let _state = lock(&audit.state_lock);
            let verdict = verify_and_record(&audit.store, &report, &options)?;
            let changed = if verdict.ok {
                record_pcrs(&audit.store, &report.host_id, &report.tpm.quote.pcrs)?
            } else {
                Vec::new()
            };
            (verdict, changed)
        }
        Err(err) => (malformed_verdict(err.to_string()), Vec::new()),
    };
    Ok(HostAudit {
        target: target.to_owned(),
        ok: verdict.ok,
        host_id,
        enrolled_now,
        changed_pcrs,
        verdict: Some(verdict),
        error: None,
    })
}

/// Enrolls the agent's AK unless the state already holds it under this EK for this host;
/// true when it enrolled it now.
async fn ensure_enrolled(
    audit: &Audit,
    client: &mut AgentClient<tonic::transport::Channel>,
    enrollment: pb::Enrollment,
) -> anyhow::Result<bool> {
    let request = EnrollRequest {
        format: REQUEST_FORMAT.into(),
        host_id: enrollment.host_id,
        ek_pub: enrollment.ek_public,
        ek_cert: (!enrollment.ek_certificate_der.is_empty())
            .then_some(enrollment.ek_certificate_der),
        ek_chain: enrollment.ek_chain_der,
        ak_pub: enrollment.ak_public,
    };
    let ak_name = Public::parse_tpm2b(&request.ak_pub)
        .ok()
        .and_then(|ak| ak.name())
        .map(hex::encode)
        .context("the agent's AK public does not parse")?;
    let challenge = {
        let _state = lock(&audit.state_lock);
        let state = audit.store.load()?;
        let known = state.enrolled.get(&ak_name).is_some_and(|e| {
            e.host_id == request.host_id && e.ek_pub == hex::encode(&request.ek_pub)
        });
        if known {
            return Ok(false);
        }
        enroll::create_challenge(&audit.store, &request, &audit.options)
            .context("enrollment refused")?
    };
    let reply = client
        .activate_credential(pb::ActivateCredentialRequest {
            credential_blob: challenge.credential_blob,
            encrypted_secret: challenge.encrypted_secret,
            enroll_nonce: challenge.enroll_nonce.clone(),
        })
        .await
        .context("ActivateCredential failed")?
        .into_inner();
    let proof = EnrollProof {
        format: PROOF_FORMAT.into(),
        host_id: reply.host_id,
        enroll_nonce: challenge.enroll_nonce,
        proof: reply.proof,
    };
    let _state = lock(&audit.state_lock);
    enroll::finish(&audit.store, &proof, SystemTime::now()).context("enrollment refused")?;
    Ok(true)
}

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Host id -> bank -> PCR index -> value, at each host's last accepted audit.
type PcrHistory = BTreeMap<String, PcrValues>;

/// Records `pcrs` as `host_id`'s last accepted values; returns the PCRs that changed since the
/// previous ones (none on a host's first audit).
fn record_pcrs(store: &Store, host_id: &str, pcrs: &PcrValues) -> anyhow::Result<Vec<String>> {
    let path = store.path().with_file_name(PCR_HISTORY_FILE);
    let mut history: PcrHistory = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is corrupt", path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => PcrHistory::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let changed = history.get(host_id).map_or_else(Vec::new, |before| {
        pcrs.iter()
            .flat_map(|(bank, values)| {
                values.iter().filter_map(move |(index, value)| {
                    let old = before.get(bank).and_then(|b| b.get(index));
                    (old != Some(value)).then(|| format!("{bank}:{index}"))
                })
            })
            .collect()
    });
    history.insert(host_id.to_owned(), pcrs.clone());
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&history)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(changed)
}

/// One audit for a terminal: the verdict's checks, then what the audit did.
fn human_one(audit: &HostAudit) -> String {
    let mut text = String::new();
    if let Some(verdict) = &audit.verdict {
        text.push_str(&human(verdict));
    }
    if let Some(error) = &audit.error {
        text.push_str(&format!("audit of {} failed: {error}\n", audit.target));
    }
    if audit.enrolled_now {
        text.push_str(&format!(
            "enrolled host {} by credential activation\n",
            audit.host_id
        ));
    }
    if !audit.changed_pcrs.is_empty() {
        text.push_str(&format!(
            "PCRs changed since the last audit: {}\n",
            audit.changed_pcrs.join(", ")
        ));
    }
    text
}

/// The summary table of a `--targets` run.
fn summary(audits: &[HostAudit]) -> String {
    let mut table = super::render::table(
        &["host", "target", "verdict", "failed checks", "pcrs changed"],
        &[],
    );
    for audit in audits {
        let (verdict, failed) = match (&audit.verdict, &audit.error) {
            (Some(v), _) if v.ok => ("accepted".to_owned(), "-".to_owned()),
            (Some(v), _) => ("REJECTED".to_owned(), v.failed().join(",")),
            (None, Some(error)) => ("ERROR".to_owned(), error.clone()),
            (None, None) => ("ERROR".to_owned(), "-".to_owned()),
        };
        table.add_row(vec![
            super::render::or_dash((!audit.host_id.is_empty()).then_some(&audit.host_id)),
            audit.target.clone(),
            verdict,
            failed,
            super::render::or_dash(
                (!audit.changed_pcrs.is_empty()).then(|| audit.changed_pcrs.join(",")),
            ),
        ]);
    }
    let accepted = audits.iter().filter(|a| a.ok).count();
    format!("{table}\n{accepted}/{} hosts accepted\n", audits.len())
}
