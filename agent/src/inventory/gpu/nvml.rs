//! NVIDIA devices through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run time).
//! No library or no driver is the normal state of a machine without an NVIDIA GPU.

use serde::{Deserialize, Serialize};

/// What NVML says about one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlDevice {
    /// Device index in NVML.
    pub index: u32,
    /// Product name.
    pub name: String,
}

/// Where NVIDIA device facts come from (real NVML, or a fake in tests).
pub trait NvmlSource: Send + Sync + std::fmt::Debug {
    /// Every device NVML sees, or why NVML is unavailable.
    fn devices(&self) -> Result<Vec<NvmlDevice>, String>;
}
