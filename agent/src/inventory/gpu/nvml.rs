//! NVIDIA devices through NVML (nvml-wrapper, which loads `libnvidia-ml.so.1` at run time).
//! No library or no driver is the normal state of a machine without an NVIDIA GPU.
//!
//! Every per-device field is queried separately; a query that fails leaves the field `None` and
//! records `field: error` in [`NvmlDevice::errors`], so a failed query never looks like a zero.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nvml_wrapper::enum_wrappers::device::Clock;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use super::pci::normalize_bus_id;

/// What NVML says about one device. `None` means "not known": the reason is in `errors`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmlDevice {
    /// Device index in NVML.
    pub index: u32,
    /// Product name.
    pub name: Option<String>,
    /// `GPU-xxxxxxxx-...`.
    pub uuid: Option<String>,
    /// Board serial number.
    pub serial: Option<String>,
    /// PCI address, normalized to `dddd:bb:dd.f` lowercase.
    pub pci_bus_id: Option<String>,
    /// Total VRAM.
    pub memory_total_bytes: Option<u64>,
    /// Kernel driver version (same for every device).
    pub driver_version: Option<String>,
    /// CUDA driver API version, e.g. `12.4`.
    pub cuda_driver_version: Option<String>,
    /// CUDA compute capability, e.g. `8.0`.
    pub compute_capability: Option<String>,
    /// Current PCIe generation.
    pub pcie_gen_current: Option<u32>,
    /// Maximum PCIe generation of device and slot.
    pub pcie_gen_max: Option<u32>,
    /// Current PCIe link width (lanes).
    pub pcie_width_current: Option<u32>,
    /// Maximum PCIe link width.
    pub pcie_width_max: Option<u32>,
    /// Power management limit, watts.
    pub power_limit_w: Option<f64>,
    /// Default power limit, watts.
    pub power_limit_default_w: Option<f64>,
    /// Enforced power limit, watts.
    pub power_limit_enforced_w: Option<f64>,
    /// Maximum graphics clock, MHz.
    pub max_graphics_clock_mhz: Option<u32>,
    /// Maximum SM clock, MHz.
    pub max_sm_clock_mhz: Option<u32>,
    /// Maximum memory clock, MHz.
    pub max_memory_clock_mhz: Option<u32>,
    /// ECC currently enabled.
    pub ecc_enabled_current: Option<bool>,
    /// ECC enabled after the next reboot.
    pub ecc_enabled_pending: Option<bool>,
    /// MIG mode currently enabled.
    pub mig_enabled_current: Option<bool>,
    /// MIG mode enabled after the next reset.
    pub mig_enabled_pending: Option<bool>,
    /// Board part number.
    pub board_part_number: Option<String>,
    /// Field name -> why its query failed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

/// Why NVML as a whole could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlSourceError {
    /// No library or no driver: the normal state of a machine without an NVIDIA GPU.
    #[error("no NVIDIA driver ({0})")]
    NoDriver(String),
    /// The source is deliberately not asked (e.g. reading a fixture root).
    #[error("skipped: {0}")]
    Skipped(String),
    /// NVML loaded but a call every device depends on failed.
    #[error("NVML {call} failed: {detail}")]
    Call {
        /// The NVML call.
        call: &'static str,
        /// What NVML said.
        detail: String,
    },
}

/// Where NVIDIA device facts come from (real NVML, or a fake in tests).
pub trait NvmlSource: Send + Sync + std::fmt::Debug {
    /// Every device NVML sees, or why NVML is unavailable.
    fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlSourceError>;
}

/// The real NVML library, initialized once per [`NvmlSource::devices`] call and shut down after.
#[derive(Debug, Clone, Default)]
pub struct NvmlLibrary {
    lib_path: Option<PathBuf>,
}

impl NvmlLibrary {
    /// The system library (`libnvidia-ml.so.1` through the dynamic loader).
    pub fn system() -> Self {
        Self { lib_path: None }
    }

    /// A library at an explicit path (tests point this at the simulated NVML).
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            lib_path: Some(path.into()),
        }
    }

    /// Loads and initializes the library (the caller shuts it down).
    pub(crate) fn init(&self) -> Result<Nvml, NvmlSourceError> {
        let mut builder = Nvml::builder();
        if let Some(path) = &self.lib_path {
            builder.lib_path(path.as_os_str());
        }
        builder.init().map_err(init_error)
    }
}

/// Maps an `Nvml::init` failure: missing library/driver is "no NVIDIA driver".
fn init_error(err: NvmlError) -> NvmlSourceError {
    match err {
        NvmlError::LibloadingError(e) => NvmlSourceError::NoDriver(e.to_string()),
        NvmlError::DriverNotLoaded => NvmlSourceError::NoDriver("driver not loaded".into()),
        NvmlError::LibraryNotFound => NvmlSourceError::NoDriver("library not found".into()),
        other => NvmlSourceError::Call {
            call: "init",
            detail: other.to_string(),
        },
    }
}

impl NvmlSource for NvmlLibrary {
    fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlSourceError> {
        let nvml = self.init()?;
        let result = read_devices(&nvml);
        // Shutdown errors are not interesting once the facts are in hand.
        let _ = nvml.shutdown();
        result
    }
}

fn read_devices(nvml: &Nvml) -> Result<Vec<NvmlDevice>, NvmlSourceError> {
    let count = nvml.device_count().map_err(|e| NvmlSourceError::Call {
        call: "nvmlDeviceGetCount",
        detail: e.to_string(),
    })?;
    let mut system_errors = BTreeMap::new();
    let driver_version = field(
        &mut system_errors,
        "driver_version",
        nvml.sys_driver_version(),
    );
    let cuda_driver_version = field(
        &mut system_errors,
        "cuda_driver_version",
        nvml.sys_cuda_driver_version().map(format_cuda_version),
    );
    let mut devices = Vec::new();
    for index in 0..count {
        let mut device = NvmlDevice {
            index,
            driver_version: driver_version.clone(),
            cuda_driver_version: cuda_driver_version.clone(),
            errors: system_errors.clone(),
            ..NvmlDevice::default()
        };
        match nvml.device_by_index(index) {
            Ok(handle) => read_device(&handle, &mut device),
            Err(e) => {
                device.errors.insert("handle".into(), e.to_string());
            }
        }
        devices.push(device);
    }
    Ok(devices)
}

/// Fills every field of `out` from `dev`, recording each failed query. A device that is lost
/// (fell off the bus) on the first query gets one `device` error instead of one per field.
fn read_device(dev: &nvml_wrapper::Device<'_>, out: &mut NvmlDevice) {
    let e = &mut out.errors;
    let name = dev.name();
    if let Err(lost @ NvmlError::GpuLost) = &name {
        e.insert("device".into(), lost.to_string());
        return;
    }
    out.name = field(e, "name", name);
    out.uuid = field(e, "uuid", dev.uuid());
    out.serial = field(e, "serial", dev.serial());
    out.pci_bus_id = field(e, "pci_bus_id", dev.pci_info().map(|p| p.bus_id))
        .map(|id| normalize_bus_id(&id).unwrap_or(id));
    out.memory_total_bytes = field(e, "memory_total_bytes", dev.memory_info().map(|m| m.total));
    out.compute_capability = field(
        e,
        "compute_capability",
        dev.cuda_compute_capability()
            .map(|c| format!("{}.{}", c.major, c.minor)),
    );
    out.pcie_gen_current = field(e, "pcie_gen_current", dev.current_pcie_link_gen());
    out.pcie_gen_max = field(e, "pcie_gen_max", dev.max_pcie_link_gen());
    out.pcie_width_current = field(e, "pcie_width_current", dev.current_pcie_link_width());
    out.pcie_width_max = field(e, "pcie_width_max", dev.max_pcie_link_width());
    out.power_limit_w = field(
        e,
        "power_limit_w",
        dev.power_management_limit().map(mw_to_w),
    );
    out.power_limit_default_w = field(
        e,
        "power_limit_default_w",
        dev.power_management_limit_default().map(mw_to_w),
    );
    out.power_limit_enforced_w = field(
        e,
        "power_limit_enforced_w",
        dev.enforced_power_limit().map(mw_to_w),
    );
    out.max_graphics_clock_mhz = field(
        e,
        "max_graphics_clock_mhz",
        dev.max_clock_info(Clock::Graphics),
    );
    out.max_sm_clock_mhz = field(e, "max_sm_clock_mhz", dev.max_clock_info(Clock::SM));
    out.max_memory_clock_mhz = field(e, "max_memory_clock_mhz", dev.max_clock_info(Clock::Memory));
    if let Some(ecc) = field(e, "ecc_mode", dev.is_ecc_enabled()) {
        out.ecc_enabled_current = Some(ecc.currently_enabled);
        out.ecc_enabled_pending = Some(ecc.pending_enabled);
    }
    if let Some(mig) = field(e, "mig_mode", dev.mig_mode()) {
        out.mig_enabled_current = Some(mig.current != 0);
        out.mig_enabled_pending = Some(mig.pending != 0);
    }
    out.board_part_number = field(e, "board_part_number", dev.board_part_number());
}

/// The value of one query, or `None` with its error recorded under `name`.
fn field<T>(
    errors: &mut BTreeMap<String, String>,
    name: &str,
    result: Result<T, NvmlError>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            errors.insert(name.to_owned(), err.to_string());
            None
        }
    }
}

/// NVML reports power in milliwatts.
fn mw_to_w(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

/// `12040` -> `12.4` (NVML encodes major * 1000 + minor * 10).
pub fn format_cuda_version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// A source that is deliberately not asked, e.g. when reading a fixture root.
#[derive(Debug, Clone)]
pub struct Skipped(pub String);

impl NvmlSource for Skipped {
    fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlSourceError> {
        Err(NvmlSourceError::Skipped(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_version_format() {
        assert_eq!(format_cuda_version(12040), "12.4");
        assert_eq!(format_cuda_version(11080), "11.8");
    }

    #[test]
    fn missing_library_is_no_driver() {
        let err = NvmlLibrary::at("/nonexistent/libnvidia-ml.so.1")
            .devices()
            .unwrap_err();
        assert!(matches!(err, NvmlSourceError::NoDriver(_)), "{err:?}");
        assert!(err.to_string().starts_with("no NVIDIA driver ("), "{err}");
    }

    #[test]
    fn driver_not_loaded_is_no_driver() {
        let err = init_error(NvmlError::DriverNotLoaded);
        assert_eq!(err.to_string(), "no NVIDIA driver (driver not loaded)");
    }
}
