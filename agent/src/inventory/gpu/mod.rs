//! GPUs: NVIDIA devices through NVML, every OpenCL platform and device, and the PCI bus (so a
//! card whose driver is missing still shows up), merged into one entry per physical device by
//! PCI bus address. A CPU OpenCL device (PoCL) is an OpenCL device, never a GPU.

mod merge;
pub mod nvml;
pub mod opencl;
pub mod pci;

use serde::{Deserialize, Serialize};

use std::time::Instant;

use super::{elapsed_ms, error_chain, Notes, ProbeError, ProbeStatus};
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

/// Collects the GPU section from all three sources. OpenCL (the slowest: it may start a child
/// process that loads a compiler) runs on its own thread while NVML and PCI are read.
///
/// The section is `ok` even when every source is unavailable: `sources` says why each one is.
pub fn collect(
    fs: &FsRoot,
    nvml: &dyn nvml::NvmlSource,
    opencl: &dyn opencl::OpenClSource,
    notes: &mut Notes,
) -> Result<GpuInventory, ProbeError> {
    std::thread::scope(|scope| {
        let opencl_thread = scope.spawn(|| timed(|| opencl.devices()));
        let (nvml_result, nvml_ms) = timed(|| nvml.devices());
        let (pci_result, pci_ms) = timed(|| pci::collect(fs, notes));
        let (opencl_result, opencl_ms) = opencl_thread.join().unwrap_or_else(|_| {
            (
                Err(opencl::OpenClSourceError::Child(
                    "enumeration thread panicked".into(),
                )),
                0.0,
            )
        });
        let mut sources = GpuSources::default();
        let nvml_devices = settle(&mut sources.nvml, nvml_result, nvml_ms);
        let pci_gpus = settle(&mut sources.pci, pci_result, pci_ms);
        let opencl_devices = match settle(&mut sources.opencl, opencl_result, opencl_ms) {
            Some(report) => {
                for note in &report.notes {
                    notes.add("opencl", note);
                }
                report.devices
            }
            None => Vec::new(),
        };
        let gpus = merge::merge(
            pci_gpus.unwrap_or_default(),
            nvml_devices.unwrap_or_default(),
            &opencl_devices,
        );
        Ok(GpuInventory {
            gpus,
            opencl_devices,
            sources,
        })
    })
}

/// Runs `f`, returning its result and wall time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, elapsed_ms(start))
}

/// Records a source's status and returns its value when it answered.
fn settle<T, E: std::error::Error>(
    status: &mut SourceStatus,
    result: Result<T, E>,
    collection_ms: f64,
) -> Option<T> {
    status.collection_ms = collection_ms;
    match result {
        Ok(value) => {
            status.status = ProbeStatus::Ok;
            status.reason = None;
            Some(value)
        }
        Err(err) => {
            status.status = ProbeStatus::Unavailable;
            status.reason = Some(error_chain(&err));
            None
        }
    }
}
