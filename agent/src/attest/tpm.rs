//! The daemon's [`Attestor`] over fog-tpm: the TPM named by `[tpm] tcti` is opened per request
//! (the daemon starts without a TPM and answers `Unavailable` naming the TCTI until one is
//! reachable), the AK is the blob in the state dir (created on first use, as
//! `fog-agent attest enroll-request` does), and the payload is [`super::payload`]'s.

use std::path::PathBuf;
use std::time::SystemTime;

use fog_tpm::ak::{AkAlg, AkBlob, AkStateError, EkAlg};
use fog_tpm::device::{Tpm, TpmError};
use fog_tpm::report::parse_pcr_spec;
use fog_tpm::tcti::Tcti;

use super::{
    ActivationProof, ActivationRequest, AttestError, AttestationReport, Attestor, Enrollment,
    PcrBank, PcrSelection,
};
use crate::inventory::Inventory;

/// Attestation through the TPM at one TCTI.
#[derive(Clone)]
pub struct TpmAttestor {
    tcti: Tcti,
    state_dir: PathBuf,
}

impl std::fmt::Debug for TpmAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmAttestor")
            .field("tcti", &self.tcti)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl TpmAttestor {
    /// An attestor using the TPM at `tcti`, and the AK blob and benchmark cache under
    /// `state_dir`.
    pub fn new(tcti: Tcti, state_dir: PathBuf) -> Self {
        Self { tcti, state_dir }
    }

    /// Opens the TPM; not reachable is `TpmUnreachable` with fog-tpm's line naming the TCTI.
    pub(super) fn open(&self) -> Result<Tpm, AttestError> {
        Tpm::open(&self.tcti).map_err(|e| tpm_error(&self.tcti, e))
    }

    /// What a failed command on an open TPM means: when the TPM cannot be reached any more (it
    /// died or went away mid-request: swtpm killed, the device reset), `TpmUnreachable`, as when
    /// it was unreachable from the start (UNAVAILABLE: a retry may work once it is back), with
    /// both errors; otherwise the command itself failed (`Failed`). Decided by opening the TPM
    /// again rather than by the TSS response code, which this crate does not see.
    pub(super) fn command_failed(&self, tpm: Tpm, err: TpmError) -> AttestError {
        drop(tpm);
        match Tpm::open(&self.tcti) {
            Ok(_) => tpm_error(&self.tcti, err),
            Err(gone) => AttestError::TpmUnreachable(format!(
                "the TPM stopped answering during a request ({err}); {gone}"
            )),
        }
    }

    /// The AK blob, created (and saved) on first use with the machine id as host id.
    pub(super) fn ak(&self, tpm: &Tpm) -> Result<AkBlob, AttestError> {
        match AkBlob::load(&self.state_dir) {
            Ok(ak) => Ok(ak),
            Err(AkStateError::Missing(_)) => {
                let host_id = machine_id()?;
                let ak = tpm
                    .create_ak(AkAlg::Rsa, EkAlg::Rsa, &host_id)
                    .map_err(|e| tpm_error(&self.tcti, e))?;
                ak.save(&self.state_dir)
                    .map_err(|e| AttestError::Failed(format!("cannot save the AK: {e}")))?;
                Ok(ak)
            }
            Err(e) => Err(AttestError::Failed(e.to_string())),
        }
    }
}

/// `TpmUnreachable` when the TPM cannot be reached, `Failed` otherwise; the message names the TCTI.
fn tpm_error(tcti: &Tcti, e: TpmError) -> AttestError {
    match e {
        TpmError::Open { .. } => AttestError::TpmUnreachable(e.to_string()),
        other => AttestError::Failed(format!("TPM at {tcti}: {other}")),
    }
}

/// This host's id: `/etc/machine-id`, trimmed (the AK's host id, and the agent's market-link
/// identity in development certificates).
pub fn machine_id() -> Result<String, AttestError> {
    let id = std::fs::read_to_string("/etc/machine-id").map_err(|e| {
        AttestError::Failed(format!(
            "cannot read /etc/machine-id for the AK's host id: {e}"
        ))
    })?;
    let id = id.trim();
    if id.is_empty() {
        return Err(AttestError::Failed("/etc/machine-id is empty".into()));
    }
    Ok(id.to_owned())
}

/// The fog-tpm selection of a validated API selection (`sha256:0,1,...`).
fn tpm_selection(
    selection: &PcrSelection,
) -> Result<fog_tpm::structures::PcrSelection, AttestError> {
    let bank = match selection.bank {
        PcrBank::Sha256 => "sha256",
        PcrBank::Sha384 => "sha384",
    };
    let list = selection
        .pcrs
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",");
    parse_pcr_spec(&format!("{bank}:{list}")).map_err(|e| AttestError::InvalidArgument {
        field: "pcr_selection.pcrs",
        message: e.to_string(),
    })
}

impl Attestor for TpmAttestor {
    fn attest(
        &self,
        nonce: &[u8],
        selection: &PcrSelection,
        inventory: &Inventory,
    ) -> Result<AttestationReport, AttestError> {
        let selection = tpm_selection(selection)?;
        let tpm = self.open()?;
        let ak = self.ak(&tpm)?;
        let payload = super::payload::build_with_cached_benchmarks(
            &self.state_dir,
            &ak.host_id,
            nonce,
            inventory,
        )?;
        let report = match tpm.attest(&ak, nonce, payload, &selection) {
            Ok(report) => report,
            Err(err) => return Err(self.command_failed(tpm, err)),
        };
        let report_json = report
            .to_json()
            .map_err(|e| AttestError::Failed(format!("cannot serialize the report: {e}")))?;
        Ok(AttestationReport {
            report_json,
            host_id: report.host_id,
            created_at: SystemTime::now(),
        })
    }

    fn enrollment(&self) -> Result<Enrollment, AttestError> {
        let tpm = self.open()?;
        let ak = self.ak(&tpm)?;
        let req = match tpm.enroll_request(&ak) {
            Ok(req) => req,
            Err(err) => return Err(self.command_failed(tpm, err)),
        };
        let ak_name = fog_tpm::structures::Public::parse_tpm2b(&req.ak_pub)
            .ok()
            .and_then(|p| p.name())
            .ok_or_else(|| AttestError::Failed("cannot compute the AK name".into()))?;
        Ok(Enrollment {
            host_id: req.host_id,
            ek_public: req.ek_pub,
            ek_certificate_der: req.ek_cert,
            ek_chain_der: req.ek_chain,
            ak_public: req.ak_pub,
            ak_name,
        })
    }

    fn activate_credential(
        &self,
        request: &ActivationRequest,
    ) -> Result<ActivationProof, AttestError> {
        let tpm = self.open()?;
        let ak = AkBlob::load(&self.state_dir).map_err(|e| AttestError::Failed(e.to_string()))?;
        let secret = match tpm.activate_credential(
            &ak,
            &request.credential_blob,
            &request.encrypted_secret,
        ) {
            Ok(secret) => secret,
            Err(err) => {
                return Err(match self.command_failed(tpm, err) {
                    gone @ AttestError::TpmUnreachable(_) => gone,
                    failed => AttestError::Failed(format!(
                        "credential activation failed (the challenge was not made for this TPM's EK and AK): {failed}"
                    )),
                })
            }
        };
        Ok(ActivationProof {
            proof: fog_tpm::enroll::proof_mac(&secret, &ak.host_id, &request.enroll_nonce),
            host_id: ak.host_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_converts_to_a_tpm_selection() {
        let s = PcrSelection {
            bank: PcrBank::Sha256,
            pcrs: vec![0, 7, 23],
        };
        let t = tpm_selection(&s).unwrap();
        assert_eq!(t.banks.len(), 1);
        assert_eq!(t.banks[0].select, vec![0b1000_0001, 0, 0b1000_0000]);
    }
}
