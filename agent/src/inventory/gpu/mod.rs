//! GPUs: NVIDIA devices through NVML, every OpenCL platform and device, and the PCI bus (so a
//! card whose driver is missing still shows up), merged into one entry per physical device by
//! PCI bus address. A CPU OpenCL device (PoCL) is an OpenCL device, never a GPU.
//!
//! Each GPU also says which CDI device jobs get it through ([`annotate_cdi`], from the specs of
//! the standard CDI dirs; the daemon uses `[jobs] cdi_spec_dirs`).

mod merge;
pub mod nvml;
pub mod opencl;
pub mod opencl_cache;
pub mod pci;

use serde::{Deserialize, Serialize};

use std::path::PathBuf;
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
    /// PCI address, normalized to `dddd:bb:dd.f` lowercase; for a device no source could place
    /// on the bus, a synthetic key `nvml:<index>` or `opencl:<index>` (see the merge rules in
    /// `merge.rs`).
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
    /// The CDI device jobs get it through (`nvidia.com/gpu=GPU-...`); `None`: device-node mode
    /// (see [`annotate_cdi`]).
    #[serde(default)]
    pub cdi_device: Option<String>,
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
        let mut inventory = GpuInventory {
            gpus,
            opencl_devices,
            sources,
        };
        let dirs: Vec<PathBuf> = crate::cdi::DEFAULT_SPEC_DIRS
            .iter()
            .map(PathBuf::from)
            .collect();
        annotate_cdi(&mut inventory, fs, &dirs, notes);
        Ok(inventory)
    })
}

/// Sets each GPU's [`Gpu::cdi_device`] from the CDI specs of `dirs` below `fs` (see
/// [`crate::cdi::find_gpu_device`] for the rule); spec files that were skipped become notes.
/// The specs are read only when there is a GPU.
pub fn annotate_cdi(
    inventory: &mut GpuInventory,
    fs: &FsRoot,
    dirs: &[PathBuf],
    notes: &mut Notes,
) {
    if inventory.gpus.is_empty() {
        return;
    }
    let registry = crate::cdi::Registry::load(fs, dirs);
    for problem in &registry.problems {
        notes.add("cdi", problem);
    }
    for gpu in &mut inventory.gpus {
        let key = crate::cdi::GpuKey {
            pci_bus_id: &gpu.pci_bus_id,
            uuid: gpu.nvml.as_ref().and_then(|n| n.uuid.as_deref()),
        };
        gpu.cdi_device = crate::cdi::find_gpu_device(&registry, fs, key)
            .map(|device| device.qualified_name.clone());
    }
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

#[cfg(test)]
mod tests {
    use super::nvml::{NvmlDevice, NvmlSource, NvmlSourceError};
    use super::opencl::{OpenClDevice, OpenClReport, OpenClSource, OpenClSourceError};
    use super::*;

    #[derive(Debug)]
    struct FakeNvml(Vec<NvmlDevice>);
    impl NvmlSource for FakeNvml {
        fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlSourceError> {
            Ok(self.0.clone())
        }
    }

    #[derive(Debug)]
    struct FakeOpenCl(Vec<OpenClDevice>);
    impl OpenClSource for FakeOpenCl {
        fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
            Ok(OpenClReport {
                devices: self.0.clone(),
                notes: vec!["platform Broken: devices: CL_DEVICE_NOT_FOUND".into()],
            })
        }
    }

    fn fixture(name: &str) -> FsRoot {
        FsRoot::new(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    fn nv(index: u32, bus: &str) -> NvmlDevice {
        NvmlDevice {
            index,
            name: Some("NVIDIA A100 80GB PCIe".into()),
            pci_bus_id: Some(bus.into()),
            memory_total_bytes: Some(80 << 30),
            ..NvmlDevice::default()
        }
    }

    fn cl(
        platform: &str,
        kind: &str,
        vendor_id: u32,
        name: &str,
        bus: Option<&str>,
    ) -> OpenClDevice {
        OpenClDevice {
            platform_name: platform.into(),
            device_type: kind.into(),
            name: name.into(),
            vendor_id,
            global_memory_bytes: 4 << 30,
            pci_bus_id: bus.map(str::to_owned),
            ..OpenClDevice::default()
        }
    }

    #[test]
    fn server_fixture_merges_nvml_opencl_and_undriven_amd_card() {
        let nvml = FakeNvml(vec![nv(0, "0000:17:00.0"), nv(1, "0000:65:00.0")]);
        let opencl = FakeOpenCl(vec![
            cl(
                "NVIDIA CUDA",
                "gpu",
                0x10de,
                "NVIDIA A100 80GB PCIe",
                Some("0000:17:00.0"),
            ),
            cl(
                "NVIDIA CUDA",
                "gpu",
                0x10de,
                "NVIDIA A100 80GB PCIe",
                Some("0000:65:00.0"),
            ),
            cl(
                "Portable Computing Language",
                "cpu",
                0x8086,
                "pthread",
                None,
            ),
        ]);
        let mut notes = Notes::default();
        let inv = collect(&fixture("server-2s-smt"), &nvml, &opencl, &mut notes).unwrap();
        assert_eq!(inv.sources.pci.status, ProbeStatus::Ok);
        assert_eq!(inv.sources.nvml.status, ProbeStatus::Ok);
        assert_eq!(inv.sources.opencl.status, ProbeStatus::Ok);
        assert_eq!(inv.opencl_devices.len(), 3);
        let ids: Vec<_> = inv.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        assert_eq!(ids, ["0000:17:00.0", "0000:65:00.0", "0000:ca:00.0"]);
        let a100 = &inv.gpus[0];
        assert_eq!(a100.seen_by, ["pci", "nvml", "opencl"]);
        assert_eq!(a100.vendor, "NVIDIA");
        assert_eq!(a100.device_id, "0x20b5");
        assert_eq!(a100.subsystem_device_id.as_deref(), Some("0x1533"));
        assert_eq!(a100.pci_class.as_deref(), Some("0x030200"));
        assert_eq!(a100.driver.as_deref(), Some("nvidia"));
        assert_eq!(a100.numa_node, Some(0));
        assert_eq!(a100.memory_total_bytes, Some(80 << 30));
        assert_eq!(inv.gpus[1].opencl_device_indices, [1]);
        let amd = &inv.gpus[2];
        assert_eq!(amd.seen_by, ["pci"]);
        assert_eq!(amd.driver, None);
        assert_eq!(amd.vendor, "AMD");
        assert_eq!(amd.numa_node, Some(1));
        assert_eq!(
            amd.name.as_deref(),
            Some("Aldebaran/MI200 [Instinct MI210]")
        );
        assert_eq!(
            notes.as_slice(),
            ["opencl: platform Broken: devices: CL_DEVICE_NOT_FOUND"]
        );
    }

    #[test]
    fn laptop_fixture_intel_igpu_via_opencl_without_bus_id() {
        let nvml = FakeNvml(vec![NvmlDevice {
            name: Some("NVIDIA GeForce RTX 3060 Laptop GPU".into()),
            pci_bus_id: Some("0000:01:00.0".into()),
            ..NvmlDevice::default()
        }]);
        let opencl = FakeOpenCl(vec![cl(
            "Intel(R) OpenCL Graphics",
            "gpu",
            0x8086,
            "Intel(R) Iris(R) Xe Graphics",
            None,
        )]);
        let mut notes = Notes::default();
        let inv = collect(&fixture("laptop-hybrid"), &nvml, &opencl, &mut notes).unwrap();
        assert_eq!(inv.gpus.len(), 2);
        let igpu = &inv.gpus[0];
        assert_eq!(igpu.pci_bus_id, "0000:00:02.0");
        assert_eq!(igpu.vendor, "Intel");
        assert_eq!(igpu.driver.as_deref(), Some("i915"));
        assert_eq!(igpu.numa_node, None);
        assert_eq!(igpu.name.as_deref(), Some("Intel(R) Iris(R) Xe Graphics"));
        assert_eq!(igpu.seen_by, ["pci", "opencl"]);
        assert_eq!(igpu.memory_total_bytes, Some(4 << 30));
        let dgpu = &inv.gpus[1];
        assert_eq!(
            dgpu.name.as_deref(),
            Some("NVIDIA GeForce RTX 3060 Laptop GPU")
        );
        assert_eq!(dgpu.seen_by, ["pci", "nvml"]);
    }

    #[test]
    fn vm_fixture_has_no_display_controller_and_skipped_sources() {
        let mut notes = Notes::default();
        let inv = collect(
            &fixture("vm-2vcpu"),
            &nvml::Skipped("not the live host".into()),
            &opencl::Skipped("not the live host".into()),
            &mut notes,
        )
        .unwrap();
        assert!(inv.gpus.is_empty());
        assert_eq!(inv.sources.pci.status, ProbeStatus::Ok);
        assert_eq!(inv.sources.nvml.status, ProbeStatus::Unavailable);
        assert_eq!(
            inv.sources.opencl.reason.as_deref(),
            Some("skipped: not the live host")
        );
        assert!(notes.as_slice().is_empty(), "{:?}", notes.as_slice());
    }

    #[test]
    fn missing_pci_bus_is_unavailable_source() {
        let mut notes = Notes::default();
        let inv = collect(
            &FsRoot::new("/nonexistent-fixture"),
            &FakeNvml(vec![nv(0, "0000:17:00.0")]),
            &opencl::Skipped("x".into()),
            &mut notes,
        )
        .unwrap();
        assert_eq!(inv.sources.pci.status, ProbeStatus::Unavailable);
        let reason = inv.sources.pci.reason.unwrap();
        assert!(
            reason.starts_with("cannot read /sys/bus/pci/devices"),
            "{reason}"
        );
        assert_eq!(inv.gpus.len(), 1);
        assert_eq!(inv.gpus[0].seen_by, ["nvml"]);
    }

    #[derive(Debug)]
    struct SlowNvml;
    impl NvmlSource for SlowNvml {
        fn devices(&self) -> Result<Vec<NvmlDevice>, NvmlSourceError> {
            std::thread::sleep(std::time::Duration::from_millis(150));
            Ok(Vec::new())
        }
    }

    #[derive(Debug)]
    struct SlowOpenCl;
    impl OpenClSource for SlowOpenCl {
        fn devices(&self) -> Result<OpenClReport, OpenClSourceError> {
            std::thread::sleep(std::time::Duration::from_millis(150));
            Ok(OpenClReport::default())
        }
    }

    #[test]
    fn opencl_overlaps_nvml_and_pci() {
        let start = std::time::Instant::now();
        let inv = collect(
            &fixture("vm-2vcpu"),
            &SlowNvml,
            &SlowOpenCl,
            &mut Notes::default(),
        )
        .unwrap();
        let wall = start.elapsed();
        assert!(
            wall.as_millis() < 280,
            "sources ran one after the other: {wall:?}"
        );
        assert!(inv.sources.opencl.collection_ms >= 150.0);
        assert!(inv.sources.nvml.collection_ms >= 150.0);
    }
}
