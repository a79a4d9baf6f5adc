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

pub use accounting::{GpuAccounting, GpuProcessUse, NoGpuAccounting, ProcessSpan};
pub use health::{GpuHealth, GpuHealthSource, NoNvml};
pub use nvml::NvmlTelemetry;
pub use telemetry::{
    sample_all, GpuSample, GpuStatus, GpuTelemetrySource, UnavailableGpuTelemetry,
};
