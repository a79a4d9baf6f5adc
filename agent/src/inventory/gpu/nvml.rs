//! NVIDIA devices through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run time).
//!
//! No library or no driver is the normal state of a machine without an NVIDIA GPU and is
//! reported as "no NVIDIA driver", not as a failure. A query that fails on one device is recorded
//! in that device's `field_errors`, so a missing value never looks like a zero.

use std::ffi::OsString;
use std::path::PathBuf;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

/// What NVML says about one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlDevice {
    /// Device index in NVML.
    pub index: u32,
    /// Product name, e.g. `NVIDIA A100 80GB PCIe`.
    pub name: String,
    /// `GPU-...` UUID.
    pub uuid: Option<String>,
    /// Board serial number.
    pub serial: Option<String>,
    /// Board part number.
    pub board_part_number: Option<String>,
    /// PCI address as NVML spells it, e.g. `00000000:65:00.0`.
    pub pci_bus_id: Option<String>,
    /// PCI device and vendor id, e.g. `0x20B510DE`.
    pub pci_device_id: Option<String>,
    /// PCI subsystem id.
    pub pci_subsystem_id: Option<String>,
    /// Framebuffer memory.
    pub memory_total_bytes: Option<u64>,
    /// Driver version, e.g. `550.54.15`.
    pub driver_version: Option<String>,
    /// Highest CUDA version the driver supports, e.g. `12.4`.
    pub cuda_driver_version: Option<String>,
    /// CUDA compute capability, e.g. `8.0`.
    pub compute_capability: Option<String>,
    /// PCIe link generation now.
    pub pcie_gen_current: Option<u32>,
    /// Highest PCIe link generation the device and system support.
    pub pcie_gen_max: Option<u32>,
    /// PCIe link width now.
    pub pcie_width_current: Option<u32>,
    /// Highest PCIe link width.
    pub pcie_width_max: Option<u32>,
    /// Power management limit.
    pub power_limit_watts: Option<f64>,
    /// Highest graphics clock.
    pub max_graphics_clock_mhz: Option<u32>,
    /// Highest SM clock.
    pub max_sm_clock_mhz: Option<u32>,
    /// Highest memory clock.
    pub max_memory_clock_mhz: Option<u32>,
    /// ECC enabled now.
    pub ecc_enabled: Option<bool>,
    /// ECC enabled after the next reboot.
    pub ecc_pending: Option<bool>,
    /// Multi-Instance GPU mode enabled now.
    pub mig_enabled: Option<bool>,
    /// Queries that failed on this device, each `field: error` (`not supported` included).
    pub field_errors: Vec<String>,
}

/// Why there are no NVML devices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlUnavailable {
    /// No library, or a library without a loaded driver: a machine without NVIDIA GPUs.
    #[error("no NVIDIA driver ({0})")]
    NoDriver(String),
    /// NVML is there but failed.
    #[error("NVML failed: {0}")]
    Failed(String),
    /// Not asked: the inventory is not of the live host.
    #[error("skipped: not the live host")]
    Skipped,
}

/// Where NVIDIA device facts come from (real NVML, or a fake in tests).
pub trait NvmlSource: Send + Sync + std::fmt::Debug {
    /// Every device NVML sees, or why NVML is unavailable.
    fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlUnavailable>;
}

/// The real NVML library.
#[derive(Debug, Clone, Default)]
pub struct NvmlLibrary {
    /// Path of the library; `None` is the system's `libnvidia-ml.so.1`.
    pub lib_path: Option<PathBuf>,
}

impl NvmlLibrary {
    /// NVML loaded from `path` instead of the system library (a simulated library in tests).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            lib_path: Some(path.into()),
        }
    }

    /// Initializes NVML (once per call; shut down when the handle drops).
    pub fn init(&self) -> Result<Nvml, NvmlUnavailable> {
        let path: Option<OsString> = self.lib_path.as_ref().map(|p| p.as_os_str().to_owned());
        let mut builder = Nvml::builder();
        if let Some(path) = &path {
            builder.lib_path(path);
        }
        builder.init().map_err(|err| match err {
            NvmlError::LibloadingError(_)
            | NvmlError::FailedToLoadSymbol(_)
            | NvmlError::DriverNotLoaded
            | NvmlError::LibraryNotFound => NvmlUnavailable::NoDriver(err.to_string()),
            other => NvmlUnavailable::Failed(other.to_string()),
        })
    }
}

impl NvmlSource for NvmlLibrary {
    fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlUnavailable> {
        let nvml = self.init()?;
        let count = nvml
            .device_count()
            .map_err(|err| NvmlUnavailable::Failed(format!("device count: {err}")))?;
        let mut errors = Vec::new();
        let driver_version = record(&mut errors, "driver_version", nvml.sys_driver_version());
        let cuda_driver_version = record(
            &mut errors,
            "cuda_driver_version",
            nvml.sys_cuda_driver_version(),
        )
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            let mut device_errors = errors.clone();
            let device = match nvml.device_by_index(index) {
                Ok(device) => device,
                Err(err) => {
                    device_errors.push(format!("handle: {err}"));
                    devices.push(NvmlDevice {
                        index,
                        field_errors: device_errors,
                        ..NvmlDevice::default()
                    });
                    continue;
                }
            };
            let mut info = read_device(&device, &mut device_errors);
            info.index = index;
            info.driver_version.clone_from(&driver_version);
            info.cuda_driver_version.clone_from(&cuda_driver_version);
            info.field_errors = device_errors;
            devices.push(info);
        }
        Ok(devices)
    }
}

/// Every inventory field of one device; failures go to `errors`.
fn read_device(device: &nvml_wrapper::Device<'_>, errors: &mut Vec<String>) -> NvmlDevice {
    let pci = record(errors, "pci_info", device.pci_info());
    let memory = record(errors, "memory_info", device.memory_info());
    let capability = record(
        errors,
        "compute_capability",
        device.cuda_compute_capability(),
    );
    let ecc = record(errors, "ecc_mode", device.is_ecc_enabled());
    let mig = record(errors, "mig_mode", device.mig_mode());
    NvmlDevice {
        index: 0,
        name: record(errors, "name", device.name()).unwrap_or_default(),
        uuid: record(errors, "uuid", device.uuid()),
        serial: record(errors, "serial", device.serial()),
        board_part_number: record(errors, "board_part_number", device.board_part_number()),
        pci_bus_id: pci.as_ref().map(|p| p.bus_id.clone()),
        pci_device_id: pci.as_ref().map(|p| format!("0x{:08X}", p.pci_device_id)),
        pci_subsystem_id: pci
            .as_ref()
            .and_then(|p| p.pci_sub_system_id)
            .map(|id| format!("0x{id:08X}")),
        memory_total_bytes: memory.map(|m| m.total),
        driver_version: None,
        cuda_driver_version: None,
        compute_capability: capability.map(|c| format!("{}.{}", c.major, c.minor)),
        pcie_gen_current: record(errors, "pcie_gen_current", device.current_pcie_link_gen()),
        pcie_gen_max: record(errors, "pcie_gen_max", device.max_pcie_link_gen()),
        pcie_width_current: record(
            errors,
            "pcie_width_current",
            device.current_pcie_link_width(),
        ),
        pcie_width_max: record(errors, "pcie_width_max", device.max_pcie_link_width()),
        power_limit_watts: record(errors, "power_limit", device.power_management_limit())
            .map(|mw| f64::from(mw) / 1000.0),
        max_graphics_clock_mhz: record(
            errors,
            "max_graphics_clock",
            device.max_clock_info(Clock::Graphics),
        ),
        max_sm_clock_mhz: record(errors, "max_sm_clock", device.max_clock_info(Clock::SM)),
        max_memory_clock_mhz: record(
            errors,
            "max_memory_clock",
            device.max_clock_info(Clock::Memory),
        ),
        ecc_enabled: ecc.as_ref().map(|e| e.currently_enabled),
        ecc_pending: ecc.as_ref().map(|e| e.pending_enabled),
        mig_enabled: mig.map(|m| m.current == 1),
        field_errors: Vec::new(),
    }
}

/// The value, or `None` with `field: error` recorded.
fn record<T>(errors: &mut Vec<String>, field: &str, result: Result<T, NvmlError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(NvmlError::NotSupported) => {
            errors.push(format!("{field}: not supported by this device"));
            None
        }
        Err(err) => {
            errors.push(format!("{field}: {err}"));
            None
        }
    }
}

/// A source that is never asked (fixture roots).
#[derive(Debug, Clone, Copy, Default)]
pub struct SkippedNvml;

impl NvmlSource for SkippedNvml {
    fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlUnavailable> {
        Err(NvmlUnavailable::Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_no_driver() {
        let err = NvmlLibrary::at("/nonexistent/libnvidia-ml.so.1")
            .devices()
            .unwrap_err();
        assert!(matches!(err, NvmlUnavailable::NoDriver(_)), "{err:?}");
        assert!(err.to_string().starts_with("no NVIDIA driver"));
    }
}
