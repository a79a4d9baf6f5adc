//! The job runner: buyers' work as OCI containers under limits, with capacity reservations,
//! durable records, telemetry, usage counters and logs.
//!
//! - [`spec`]: the job spec and its validation (each bad field named).
//! - [`bundle`]: the OCI runtime spec (`config.json`) of a job, built with `oci-spec`.
//! - [`scratch`]: the job's scratch dir and how it is held to its size (its own filesystem).
//! - [`seccomp`]: the system-call allowlist every job runs under.
//! - [`gpus`]: a job's GPUs in its bundle: CDI devices ([`crate::cdi`]), or device nodes.
//! - [`runtime`]: the [`JobRuntime`] seam and the real [`Runc`].
//! - [`supervisor`]: the [`Supervisor`] seam (starting shims, telling whether they live) and
//!   the real [`ShimSupervisor`].
//! - [`shim`]: `fog-agent internal job-shim`, the per-job supervisor that runs the container in
//!   the foreground, caps its logs and records its exit status in the job dir.
//! - [`launcher`]: starts shims from an exec'd standby, so a StartJob waits for no exec.
//! - [`manager`]: the [`JobManager`] facade: construction, readers (from memory), capacity
//!   admission and publication through [`crate::capacity::CapacityLedger`], image removal.
//! - [`model`]: job state, record, usage, samples, views and events (plain data).
//! - `records`: the jobs in memory (what readers see) and in SQLite (what writers commit, off
//!   the readers' lock).
//! - `lifecycle`: start, stop, end. `network`: a job's network (ports, attach, detach).
//!   `recovery`: after a restart. `sampler`: the telemetry tick and limits. `retention`:
//!   forgetting ended jobs.
//! - `wait`: event-driven waits (inotify, pidfd).
//! - [`logs`]: tail and follow of the log files.
//! - [`job_metrics`]: the per-job figures `/metrics` reads ([`JobMetricsSource`]).
//!
//! GPU-seconds come from per-process accounting through [`crate::gpu::GpuAccounting`].
//!
//! Job dir layout (`<[jobs] dir>/<job id>/`): `bundle/config.json`, `scratch/` (mounted at
//! `/scratch`), `stdout.log`, `stderr.log`, `shim.pid`, `container.pid`, `exit.json`,
//! `shim.log`. The runtime's own state lives in `<[jobs] dir>/.runc`.
//!
//! Network: with `[jobs.network]`, a job gets its own network namespace attached to the CNI
//! network by [`crate::net`] before its container starts, and detached when it ends (see
//! `lifecycle`); with `[jobs] network = "none"`, a fresh namespace with loopback only. The job
//! dir then also holds `resolv.conf` and `hosts`, mounted read-only into the container.

pub mod bundle;
#[cfg(test)]
mod fake;
pub mod gpus;
pub mod job_metrics;
pub mod launcher;
mod lifecycle;
pub mod logs;
pub mod manager;
pub mod model;
mod network;
mod records;
mod recovery;
mod retention;
pub mod runtime;
mod sampler;
pub mod scratch;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod supervisor;
#[cfg(test)]
mod tests;
pub mod wait;

use std::path::PathBuf;

pub use job_metrics::{JobMetrics, JobMetricsSource, StateDiskMetrics};
pub use manager::{JobEvent, JobManager, JobRecord, JobSetup, JobState, JobView, Termination};
pub use runtime::{JobRuntime, Runc};
pub use spec::{GpuIdentity, ImageSource, JobSpec, ResolvedImage, Resources};
pub use supervisor::{ShimSupervisor, Supervisor};

/// Errors of the job runner. Each maps to one gRPC code (see the daemon's service).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A spec field is wrong (INVALID_ARGUMENT; the field path comes first).
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field path, e.g. `resources.memory_bytes`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The request does not fit the free capacity (RESOURCE_EXHAUSTED, naming the resource).
    #[error("{resource}: {message}")]
    ResourceExhausted {
        /// The resource, e.g. `resources.memory_bytes`.
        resource: String,
        /// Requested vs free.
        message: String,
    },
    /// No job with this id.
    #[error("job_id: no job {0:?}")]
    NotFound(String),
    /// The id was started before with a different spec.
    #[error("job_id: job {0:?} was started before with a different spec")]
    AlreadyExists(String),
    /// The image store failed.
    #[error("image store: {0}")]
    Images(String),
    /// A GPU's device nodes could not be found.
    #[error("{0}")]
    Gpu(String),
    /// The bundle could not be built or written.
    #[error("bundle: {0}")]
    Bundle(String),
    /// The OCI runtime failed.
    #[error("{what}: {message}")]
    Runtime {
        /// The call, e.g. `/usr/sbin/runc kill`.
        what: String,
        /// Its error output.
        message: String,
    },
    /// The container could not be started (the job is recorded as FAILED).
    #[error("job {id:?} could not be started: {message}")]
    StartFailed {
        /// The job.
        id: String,
        /// Why.
        message: String,
    },
    /// A file or dir of the job runner.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The state store.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The state filesystem's free space could not be read (its cause in the message).
    #[error("{0}")]
    Headroom(crate::state::headroom::HeadroomError),
    /// A stored record could not be read.
    #[error("stored job record: {0}")]
    Record(#[from] serde_json::Error),
    /// A job's network failed.
    #[error("job network: {0}")]
    Network(#[from] crate::net::NetError),
    /// The host cannot attach jobs to their network (FAILED_PRECONDITION: a plugin or nft
    /// missing, br_netfilter unavailable...).
    #[error("job network unavailable: {0}")]
    NetworkUnavailable(String),
}
