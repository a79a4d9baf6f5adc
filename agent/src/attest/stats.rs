//! Outcomes of attestation requests since start, for `/metrics`
//! (`fog_attestation_requests_total`, `fog_attestation_last_*_timestamp_seconds`): the daemon
//! wraps its attestor in a [`RecordingAttestor`] and hands the [`AttestationStats`] to the
//! metrics endpoint.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::{
    ActivationProof, ActivationRequest, AttestError, AttestationReport, Attestor, Enrollment,
    PcrSelection,
};
use crate::inventory::Inventory;

/// What one attestation operation has done since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OperationCounts {
    /// Answered.
    pub ok: u64,
    /// Refused as a bad request (the caller's fault, not the TPM's).
    pub invalid: u64,
    /// Failed or the TPM was unavailable.
    pub failed: u64,
    /// When the last success ended.
    pub last_success: Option<SystemTime>,
    /// When the last failure ended.
    pub last_failure: Option<SystemTime>,
}

/// Attestation operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// `GetAttestation`: a quote.
    Quote,
    /// `GetEnrollment`.
    Enrollment,
    /// `ActivateCredential`.
    Activation,
}

impl Operation {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quote => "quote",
            Self::Enrollment => "enrollment",
            Self::Activation => "activation",
        }
    }
}

/// Outcomes of the attestation backend's calls, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct AttestationStats(Mutex<BTreeMap<Operation, OperationCounts>>);

impl AttestationStats {
    /// Records one outcome.
    pub fn record<T>(&self, operation: Operation, result: &Result<T, AttestError>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = map.entry(operation).or_default();
        let now = Some(SystemTime::now());
        match result {
            Ok(_) => {
                counts.ok += 1;
                counts.last_success = now;
            }
            Err(AttestError::InvalidArgument { .. }) => counts.invalid += 1,
            Err(
                AttestError::TpmUnreachable(_) | AttestError::Payload(_) | AttestError::Failed(_),
            ) => {
                counts.failed += 1;
                counts.last_failure = now;
            }
        }
    }

    /// Every operation's counts.
    pub fn get(&self) -> BTreeMap<Operation, OperationCounts> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An [`Attestor`] that records each outcome in [`AttestationStats`].
pub struct RecordingAttestor {
    inner: Arc<dyn Attestor>,
    stats: Arc<AttestationStats>,
}

impl std::fmt::Debug for RecordingAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingAttestor")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl RecordingAttestor {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Attestor>, stats: Arc<AttestationStats>) -> Self {
        Self { inner, stats }
    }
}

impl Attestor for RecordingAttestor {
    fn attest(
        &self,
        nonce: &[u8],
        selection: &PcrSelection,
        inventory: &Inventory,
    ) -> Result<AttestationReport, AttestError> {
        let result = self.inner.attest(nonce, selection, inventory);
        self.stats.record(Operation::Quote, &result);
        result
    }

    fn enrollment(&self) -> Result<Enrollment, AttestError> {
        let result = self.inner.enrollment();
        self.stats.record(Operation::Enrollment, &result);
        result
    }

    fn activate_credential(
        &self,
        request: &ActivationRequest,
    ) -> Result<ActivationProof, AttestError> {
        let result = self.inner.activate_credential(request);
        self.stats.record(Operation::Activation, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_outcomes_are_counted_by_kind() {
        let stats = AttestationStats::default();
        stats.record::<()>(Operation::Quote, &Ok(()));
        stats.record::<()>(
            Operation::Quote,
            &Err(AttestError::TpmUnreachable("no TPM".into())),
        );
        stats.record::<()>(
            Operation::Quote,
            &Err(AttestError::InvalidArgument {
                field: "nonce",
                message: "short".into(),
            }),
        );
        let counts = stats.get()[&Operation::Quote];
        assert_eq!((counts.ok, counts.failed, counts.invalid), (1, 1, 1));
        assert!(counts.last_success.is_some() && counts.last_failure.is_some());
        assert!(!stats.get().contains_key(&Operation::Enrollment));
    }
}
