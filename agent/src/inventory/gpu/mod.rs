//! GPUs: NVIDIA devices through NVML, every OpenCL platform and device, and the PCI bus (so a
//! card whose driver is missing still shows up), merged into one entry per physical device by
//! PCI bus address. A CPU OpenCL device (PoCL) is an OpenCL device, never a GPU.

pub mod nvml;
pub mod opencl;
pub mod pci;

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError, ProbeStatus};
use crate::fsroot::FsRoot;

/// GPUs and OpenCL devices.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInventory {
    /// Physical GPUs, one per PCI function, sorted by PCI bus id.
    pub gpus: Vec<Gpu>,
    /// Every OpenCL device of every platform, CPU devices included.
    pub opencl_devices: Vec<opencl::OpenClDevice>,
    /// How each source fared.
    pub sources: GpuSources,
}

/// Status of each GPU source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSources {
    /// NVML (`no NVIDIA driver` is a normal `unavailable`).
    pub nvml: SourceStatus,
    /// OpenCL ICD loader and platforms.
    pub opencl: SourceStatus,
    /// `/sys/bus/pci/devices`.
    pub pci: SourceStatus,
}

/// Whether one source answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `ok` or `unavailable`.
    pub status: ProbeStatus,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time it took.
    pub collection_ms: f64,
}

impl Default for SourceStatus {
    fn default() -> Self {
        Self {
            status: ProbeStatus::Unavailable,
            reason: None,
            collection_ms: 0.0,
        }
    }
}

/// One physical GPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// PCI address, normalized to `dddd:bb:dd.f` lowercase.
    pub pci_bus_id: String,
    /// `NVIDIA`, `AMD`, `Intel`, or the PCI vendor id when unknown.
    pub vendor: String,
    /// Best known name: NVML, then OpenCL, then the PCI id database.
    pub name: Option<String>,
    /// PCI vendor id, e.g. `0x10de`.
    pub vendor_id: String,
    /// PCI device id.
    pub device_id: String,
    /// PCI subsystem vendor id.
    pub subsystem_vendor_id: Option<String>,
    /// PCI subsystem device id.
    pub subsystem_device_id: Option<String>,
    /// PCI class code, e.g. `0x030000` (VGA) or `0x030200` (3D controller).
    pub pci_class: Option<String>,
    /// Kernel driver bound to it, if any (`nvidia`, `amdgpu`, `i915`, `nouveau`...).
    pub driver: Option<String>,
    /// NUMA node the device is attached to.
    pub numa_node: Option<i32>,
    /// Memory of the device, from NVML or OpenCL.
    pub memory_total_bytes: Option<u64>,
    /// Which sources saw it: `pci`, `nvml`, `opencl`.
    pub seen_by: Vec<String>,
    /// NVML details for NVIDIA devices.
    pub nvml: Option<nvml::NvmlDevice>,
    /// Indices into [`GpuInventory::opencl_devices`] of the OpenCL devices that are this GPU.
    pub opencl_device_indices: Vec<usize>,
}

/// Collects the GPU section from all three sources.
pub fn collect(
    fs: &FsRoot,
    nvml: &dyn nvml::NvmlSource,
    opencl: &dyn opencl::OpenClSource,
    notes: &mut Notes,
) -> Result<GpuInventory, ProbeError> {
    let _ = (fs, nvml, opencl, notes);
    Err(ProbeError::Unavailable("gpu probe not built yet".into()))
}
