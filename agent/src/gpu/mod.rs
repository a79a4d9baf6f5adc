//! GPUs at run time, in one place: NVML telemetry for the host sampler, per-process accounting
//! for jobs' GPU-seconds and per-sample use, and health records around OpenCL benchmark runs.
//!
//! - [`telemetry`]: the [`GpuTelemetrySource`] seam and its samples; a GPU whose query failed
//!   is [`GpuStatus::Unavailable`] with the reason and no figures, so it never looks idle.
//! - [`accounting`]: the [`GpuAccounting`] seam and the arithmetic of GPU-seconds.
//! - [`health`]: the [`GpuHealthSource`] seam and the rule that a run during which throttling
//!   started is invalid.
//! - [`nvml`]: [`NvmlTelemetry`], the real implementation of all three (NVML loaded once per
//!   process, through the inventory's [`crate::inventory::gpu::nvml::NvmlLibrary`] loader).
//!
//! The inventory's own NVML probe stays in [`crate::inventory::gpu`]: the inventory is a lower
//! layer and is collected without this module.

pub mod accounting;
pub mod health;
pub mod nvml;
pub mod telemetry;

use crate::inventory::gpu::nvml::NvmlSourceError;

pub use accounting::{GpuAccounting, GpuProcessUse, NoGpuAccounting, ProcessSpan};
pub use health::{GpuHealth, GpuHealthSource, NoNvml};
pub use nvml::NvmlTelemetry;
pub use telemetry::{
    sample_all, GpuSample, GpuStatus, GpuTelemetrySource, UnavailableGpuTelemetry,
};

/// Why a GPU could not be read at run time (telemetry, health). Each message carries its cause
/// in the text (NVML's own errors are kept as their text, no `source()`), so it is shown whole
/// wherever it is printed: a telemetry sample's `error`, a benchmark's `gpu_health`, a log line.
/// [`GpuAccounting`] answers the same errors as their text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// No NVML library or no driver: the normal state of a host without an NVIDIA GPU.
    #[error("no NVIDIA driver ({0})")]
    NoDriver(String),
    /// NVML loaded but could not be initialized.
    #[error("nvml: {0}")]
    Init(NvmlSourceError),
    /// NVML was initialized but cannot count its devices.
    #[error("nvml: nvmlDeviceGetCount failed: {0}")]
    DeviceCount(String),
    /// NVML has not been initialized (never seen in practice: every query initializes first).
    #[error("nvml: not initialized")]
    NotInitialized,
    /// No NVIDIA device has this PCI address.
    #[error("nvml: no NVIDIA device at {pci_bus_id}{}", among_readable(unreadable))]
    NoDevice {
        /// The address asked for.
        pci_bus_id: String,
        /// Devices whose address NVML could not read, and why (`device 1: ...`).
        unreadable: Vec<String>,
    },
    /// The device's handle could not be opened.
    #[error("nvml: device {index} ({pci_bus_id}): {detail}")]
    Device {
        /// NVML's index of the device.
        index: u32,
        /// Its PCI address.
        pci_bus_id: String,
        /// What NVML said.
        detail: String,
    },
    /// A query failed (a lost GPU, a driver error).
    #[error("nvml: {what}: {detail}")]
    Query {
        /// The query (`utilization`, `memory info`, `power usage`, ...).
        what: &'static str,
        /// What NVML said.
        detail: String,
    },
    /// The accounting record of one process could not be read.
    #[error("nvml: accounting stats of pid {pid}: {detail}")]
    AccountingStats {
        /// The process.
        pid: u32,
        /// What NVML said.
        detail: String,
    },
    /// Per-process accounting is off (and was not turned on) or the GPU does not have it.
    #[error("nvml: per-process accounting is off or not supported on this GPU")]
    AccountingOff,
    /// Accounting mode is off and NVML refused to turn it on (usually: not root).
    #[error("nvml: accounting mode is off and cannot be turned on: {0}")]
    AccountingLocked(String),
    /// There is no NVML for this device: the reason given by whoever knows
    /// ([`NoNvml`]: no NVIDIA driver, no PCI address).
    #[error("nvml: unavailable ({0})")]
    NoNvml(String),
    /// This build or host has no GPU telemetry source ([`UnavailableGpuTelemetry`]); the text is
    /// the reason as given.
    #[error("{0}")]
    NoTelemetry(String),
    /// The source answered for another GPU than the one asked for.
    #[error("telemetry source answered for {answered} instead")]
    WrongDevice {
        /// The address it answered for.
        answered: String,
    },
}

/// ` among the readable ones (device 1: ...; ...)` when some devices were unreadable.
fn among_readable(unreadable: &[String]) -> String {
    if unreadable.is_empty() {
        String::new()
    } else {
        format!(" among the readable ones ({})", unreadable.join("; "))
    }
}
