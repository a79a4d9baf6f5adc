//! The seams the daemon serves benchmarks and attestation through, with our own types (the
//! gRPC layer converts them; `fog-tpm` and `fog-bench` never see proto types).
//!
//! The lead wires the real implementations (benchmark cache and runner, TPM attestor) into
//! [`Backends`]. Until then the defaults answer [`BackendError::Unimplemented`], which the API
//! turns into `UNIMPLEMENTED` with the message: never a made-up value. Every method is blocking
//! (TPM and benchmark work); the service calls them on tokio's blocking pool.

use std::sync::Arc;
use std::time::SystemTime;

/// Why a backend could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The feature is not built into this agent.
    #[error("{0}")]
    Unimplemented(String),
    /// The feature exists but cannot answer now (no TPM, benchmarks still running).
    #[error("{0}")]
    Unavailable(String),
    /// A request field was rejected by the backend.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, as named in the proto (`nonce`, `pcr_selection.pcrs`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
}

/// The benchmark runner's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchmarkState {
    /// Nothing measured yet, nothing running.
    Pending,
    /// Running now.
    Running,
    /// Results cached for the current fingerprint.
    Done,
    /// The last run failed.
    Failed,
}

/// One benchmark figure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkResult {
    /// Stable id, e.g. `cpu.fma.f32`.
    pub benchmark_id: String,
    /// Device measured (`cpu`, a GPU's PCI bus id, ...).
    pub device: String,
    /// Figure name, e.g. `gflops`.
    pub metric: String,
    /// Median value.
    pub value: f64,
    /// Unit of `value`.
    pub unit: String,
    /// Repetitions.
    pub samples: u32,
    /// Coefficient of variation.
    pub relative_spread: f64,
    /// Wall time in milliseconds.
    pub duration_millis: u64,
    /// Full result as JSON.
    pub detail_json: Vec<u8>,
}

/// The cached results and the runner's state.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkReport {
    /// Runner state.
    pub state: BenchmarkState,
    /// Why the last run failed.
    pub error: Option<String>,
    /// Fingerprint the results belong to.
    pub fingerprint: String,
    /// When measured.
    pub measured_at: Option<SystemTime>,
    /// The figures.
    pub results: Vec<BenchmarkResult>,
}

/// What happened to one benchmark during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchmarkPhase {
    /// Started.
    Started,
    /// Finished.
    Finished,
    /// Failed.
    Failed,
    /// Skipped.
    Skipped,
}

/// A progress event of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkProgress {
    /// The benchmark.
    pub benchmark_id: String,
    /// What happened.
    pub phase: BenchmarkPhase,
    /// Fraction of the whole run done, 0 to 1.
    pub fraction_done: f64,
    /// Detail or error message.
    pub message: String,
}

/// Benchmarks: the cache and the runner.
pub trait BenchmarkBackend: Send + Sync + 'static {
    /// The cached results and the runner's state.
    fn cached(&self) -> Result<BenchmarkReport, BackendError>;

    /// Runs the benchmarks `ids` (all when empty), reporting progress; returns the results.
    /// `progress` returns false when nobody listens any more (the run may then stop early).
    fn run(
        &self,
        ids: &[String],
        progress: &mut dyn FnMut(BenchmarkProgress) -> bool,
    ) -> Result<BenchmarkReport, BackendError>;

    /// The daemon's start-up hook: called once the first inventory is collected and again
    /// whenever the hardware fingerprint changes, so the backend can run missing benchmarks in
    /// the background. Must return at once.
    fn on_fingerprint(&self, fingerprint: &str) {
        let _ = fingerprint;
    }
}

/// PCR bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrBank {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
}

/// A validated PCR selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank.
    pub bank: PcrBank,
    /// Indices 0..=23, ascending, no duplicates.
    pub pcrs: Vec<u8>,
}

impl Default for PcrSelection {
    fn default() -> Self {
        Self {
            bank: PcrBank::Sha256,
            pcrs: (0..8).collect(),
        }
    }
}

/// A signed `fog-attest-v1` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationReport {
    /// The report JSON, as fog-tpm serializes it.
    pub report_json: Vec<u8>,
    /// Host id.
    pub host_id: String,
    /// When the quote was taken.
    pub created_at: SystemTime,
}

/// What an enroller needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// Host id.
    pub host_id: String,
    /// EK public (TPM2B_PUBLIC).
    pub ek_public: Vec<u8>,
    /// EK certificate DER, if the TPM has one.
    pub ek_certificate_der: Option<Vec<u8>>,
    /// Chain certificates from NV.
    pub ek_chain_der: Vec<Vec<u8>>,
    /// AK public (TPM2B_PUBLIC).
    pub ak_public: Vec<u8>,
    /// AK name.
    pub ak_name: Vec<u8>,
}

/// An ActivateCredential request (validated sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationRequest {
    /// TPM2B_ID_OBJECT.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET.
    pub encrypted_secret: Vec<u8>,
    /// The enroller's nonce.
    pub enroll_nonce: Vec<u8>,
}

/// The proof of an activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationProof {
    /// HMAC-SHA256(secret, "fog-enroll-v1" || host_id || enroll_nonce).
    pub proof: Vec<u8>,
    /// Host id.
    pub host_id: String,
}

/// TPM attestation and enrollment.
pub trait AttestationBackend: Send + Sync + 'static {
    /// Quotes the PCRs over `nonce` (16 to 64 bytes, validated) and the current payload.
    fn attest(
        &self,
        nonce: &[u8],
        selection: &PcrSelection,
    ) -> Result<AttestationReport, BackendError>;

    /// The EK and AK an enroller needs.
    fn enrollment(&self) -> Result<Enrollment, BackendError>;

    /// Runs TPM2_ActivateCredential and returns the proof.
    fn activate_credential(
        &self,
        request: &ActivationRequest,
    ) -> Result<ActivationProof, BackendError>;
}

/// The backends the service uses.
#[derive(Clone)]
pub struct Backends {
    /// Benchmarks.
    pub benchmarks: Arc<dyn BenchmarkBackend>,
    /// Attestation.
    pub attestation: Arc<dyn AttestationBackend>,
    /// GPU telemetry for the sampler.
    pub gpu_telemetry: Arc<dyn crate::gpu::GpuTelemetrySource>,
    /// Per-process GPU accounting for jobs' GPU-seconds.
    pub gpu_accounting: Arc<dyn crate::gpu::GpuAccounting>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Default for Backends {
    /// Nothing wired: benchmarks and attestation answer `UNIMPLEMENTED`, GPUs are
    /// "nvml unavailable", jobs' GPU-seconds missing with the reason.
    fn default() -> Self {
        Self {
            benchmarks: Arc::new(NotBuilt),
            attestation: Arc::new(NotBuilt),
            gpu_telemetry: Arc::new(crate::gpu::UnavailableGpuTelemetry::default()),
            gpu_accounting: Arc::new(crate::gpu::NoGpuAccounting),
        }
    }
}

/// The default backend: every call is `Unimplemented` with a message saying what is missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotBuilt;

const NO_BENCHMARKS: &str = "benchmarks are not built into this agent yet";
const NO_ATTESTATION: &str = "TPM attestation is not built into this agent yet";

impl BenchmarkBackend for NotBuilt {
    fn cached(&self) -> Result<BenchmarkReport, BackendError> {
        Err(BackendError::Unimplemented(NO_BENCHMARKS.into()))
    }

    fn run(
        &self,
        _ids: &[String],
        _progress: &mut dyn FnMut(BenchmarkProgress) -> bool,
    ) -> Result<BenchmarkReport, BackendError> {
        Err(BackendError::Unimplemented(NO_BENCHMARKS.into()))
    }
}

impl AttestationBackend for NotBuilt {
    fn attest(&self, _: &[u8], _: &PcrSelection) -> Result<AttestationReport, BackendError> {
        Err(BackendError::Unimplemented(NO_ATTESTATION.into()))
    }

    fn enrollment(&self) -> Result<Enrollment, BackendError> {
        Err(BackendError::Unimplemented(NO_ATTESTATION.into()))
    }

    fn activate_credential(&self, _: &ActivationRequest) -> Result<ActivationProof, BackendError> {
        Err(BackendError::Unimplemented(NO_ATTESTATION.into()))
    }
}
