//! GPUs: NVIDIA devices through NVML, every OpenCL platform and device, and the PCI bus (so a
//! card whose driver is missing still shows up), merged into one entry per physical device by
//! PCI bus address. A CPU OpenCL device (PoCL) is an OpenCL device, never a GPU.
//!
//! Merge rules: the PCI scan gives the physical functions; an NVML device joins the function at
//! its bus address (or becomes its own entry when sysfs does not show it, as in some
//! containers); an OpenCL GPU or accelerator joins by the PCI address its platform reports, else
//! the only GPU of the same vendor that has no OpenCL device yet, else it becomes its own entry
//! keyed `opencl:<index>`. Names: NVML, then OpenCL, then pci.ids; memory: NVML, then OpenCL.

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

/// Collects the GPU section from all three sources. OpenCL (the slowest: it loads whole driver
/// runtimes, in a child process) starts first and NVML and the PCI scan run meanwhile.
pub fn collect(
    fs: &FsRoot,
    nvml: &dyn nvml::NvmlSource,
    opencl: &dyn opencl::OpenClSource,
    notes: &mut Notes,
) -> Result<GpuInventory, ProbeError> {
    let (opencl_result, nvml_result, pci_result) = std::thread::scope(|scope| {
        let opencl = scope.spawn(|| timed(|| opencl.devices()));
        let nvml = scope.spawn(|| timed(|| nvml.devices()));
        let pci = timed(|| pci::scan(fs));
        let opencl = opencl.join().unwrap_or_else(|_| {
            (
                Err(opencl::OpenClUnavailable::Failed("panicked".into())),
                0.0,
            )
        });
        let nvml = nvml
            .join()
            .unwrap_or_else(|_| (Err(nvml::NvmlUnavailable::Failed("panicked".into())), 0.0));
        (opencl, nvml, pci)
    });
    let mut sources = GpuSources {
        nvml: source_status(&nvml_result),
        opencl: source_status(&opencl_result),
        pci: source_status(&pci_result),
    };
    if let (Err(err), _) = &pci_result {
        // No PCI bus in sysfs at all (some VMs, containers): say so, keep going.
        sources.pci.reason = Some(super::error_chain(err));
    }
    let pci_devices = pci_result.0.unwrap_or_default();
    let nvml_devices = nvml_result.0.unwrap_or_default();
    let report = opencl_result.0.unwrap_or_default();
    for note in report.notes {
        notes.add("opencl", note);
    }
    let gpus = merge(pci_devices, nvml_devices, &report.devices);
    Ok(GpuInventory {
        gpus,
        opencl_devices: report.devices,
        sources,
    })
}

/// Runs `f`, returning its result and the milliseconds it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = std::time::Instant::now();
    let value = f();
    (value, super::elapsed_ms(start))
}

fn source_status<T, E: std::fmt::Display>(result: &(Result<T, E>, f64)) -> SourceStatus {
    match &result.0 {
        Ok(_) => SourceStatus {
            status: ProbeStatus::Ok,
            reason: None,
            collection_ms: result.1,
        },
        Err(err) => SourceStatus {
            status: ProbeStatus::Unavailable,
            reason: Some(err.to_string()),
            collection_ms: result.1,
        },
    }
}

/// Merges the three sources into one entry per physical GPU (see the module doc for the rules).
pub fn merge(
    pci_devices: Vec<pci::PciDisplay>,
    nvml_devices: Vec<nvml::NvmlDevice>,
    opencl_devices: &[opencl::OpenClDevice],
) -> Vec<Gpu> {
    let mut gpus: Vec<Gpu> = pci_devices
        .into_iter()
        .map(|p| Gpu {
            vendor: pci::vendor_name(&p.vendor_id),
            name: p.name,
            vendor_id: p.vendor_id,
            device_id: p.device_id,
            subsystem_vendor_id: p.subsystem_vendor_id,
            subsystem_device_id: p.subsystem_device_id,
            pci_class: Some(p.class),
            driver: p.driver,
            numa_node: p.numa_node,
            seen_by: vec!["pci".to_owned()],
            pci_bus_id: p.bus_id,
            ..Gpu::default()
        })
        .collect();
    for device in nvml_devices {
        let bus_id = device.pci_bus_id.as_deref().and_then(pci::normalize_bus_id);
        let index = match bus_id
            .as_ref()
            .and_then(|id| gpus.iter().position(|g| &g.pci_bus_id == id))
        {
            Some(index) => index,
            None => {
                // Seen by NVML only: ids from NVML's packed `device << 16 | vendor`.
                let packed = device
                    .pci_device_id
                    .as_deref()
                    .and_then(|id| u32::from_str_radix(id.trim_start_matches("0x"), 16).ok());
                gpus.push(Gpu {
                    pci_bus_id: bus_id.unwrap_or_else(|| format!("nvml:{}", device.index)),
                    vendor: "NVIDIA".to_owned(),
                    vendor_id: "0x10de".to_owned(),
                    device_id: packed.map_or_else(String::new, |p| format!("0x{:04x}", p >> 16)),
                    ..Gpu::default()
                });
                gpus.len() - 1
            }
        };
        let gpu = &mut gpus[index];
        if !device.name.is_empty() {
            gpu.name = Some(device.name.clone());
        }
        gpu.memory_total_bytes = device.memory_total_bytes.or(gpu.memory_total_bytes);
        gpu.seen_by.push("nvml".to_owned());
        gpu.nvml = Some(device);
    }
    for (cl_index, device) in opencl_devices.iter().enumerate() {
        if !matches!(device.device_type.as_str(), "gpu" | "accelerator") {
            continue; // CPU devices (PoCL) are never GPUs
        }
        let by_address = device
            .pci_bus_id
            .as_deref()
            .and_then(pci::normalize_bus_id)
            .and_then(|id| gpus.iter().position(|g| g.pci_bus_id == id));
        let by_vendor = || {
            let vendor_id = device.vendor_id.as_deref()?;
            let mut candidates = gpus.iter().enumerate().filter(|(_, g)| {
                g.vendor_id.eq_ignore_ascii_case(vendor_id) && g.opencl_device_indices.is_empty()
            });
            let (first, _) = candidates.next()?;
            candidates.next().is_none().then_some(first)
        };
        let index = match by_address.or_else(by_vendor) {
            Some(index) => index,
            None => {
                gpus.push(Gpu {
                    pci_bus_id: format!("opencl:{cl_index}"),
                    vendor: device
                        .vendor_id
                        .as_deref()
                        .map_or_else(|| device.vendor.clone(), pci::vendor_name),
                    vendor_id: device.vendor_id.clone().unwrap_or_default(),
                    ..Gpu::default()
                });
                gpus.len() - 1
            }
        };
        let gpu = &mut gpus[index];
        if gpu.nvml.is_none() && !device.name.is_empty() {
            gpu.name = Some(device.name.clone());
        }
        gpu.memory_total_bytes = gpu.memory_total_bytes.or(device.global_memory_bytes);
        if !gpu.seen_by.iter().any(|s| s == "opencl") {
            gpu.seen_by.push("opencl".to_owned());
        }
        gpu.opencl_device_indices.push(cl_index);
    }
    gpus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
    gpus
}

#[cfg(test)]
mod tests {
    use super::opencl::OpenClDevice;
    use super::*;

    fn pci_gpu(bus: &str, vendor: &str, device: &str, driver: Option<&str>) -> pci::PciDisplay {
        pci::PciDisplay {
            bus_id: bus.into(),
            class: "0x030200".into(),
            vendor_id: vendor.into(),
            device_id: device.into(),
            driver: driver.map(Into::into),
            ..Default::default()
        }
    }

    fn nvml_gpu(index: u32, bus: &str) -> nvml::NvmlDevice {
        nvml::NvmlDevice {
            index,
            name: "NVIDIA A100 80GB PCIe".into(),
            uuid: Some(format!("GPU-{index}")),
            pci_bus_id: Some(bus.into()),
            pci_device_id: Some("0x20B510DE".into()),
            memory_total_bytes: Some(80 << 30),
            ..Default::default()
        }
    }

    fn cl(kind: &str, vendor_id: &str, pci: Option<&str>) -> OpenClDevice {
        OpenClDevice {
            device_type: kind.into(),
            vendor_id: Some(vendor_id.into()),
            name: format!("{kind} device"),
            pci_bus_id: pci.map(Into::into),
            global_memory_bytes: Some(1 << 30),
            ..Default::default()
        }
    }

    #[test]
    fn server_two_nvidia_and_an_undriven_amd() {
        let pci = vec![
            pci_gpu("0000:17:00.0", "0x10de", "0x20b5", Some("nvidia")),
            pci_gpu("0000:65:00.0", "0x10de", "0x20b5", Some("nvidia")),
            pci_gpu("0000:ca:00.0", "0x1002", "0x740f", None),
        ];
        let nvml = vec![
            nvml_gpu(0, "00000000:17:00.0"),
            nvml_gpu(1, "00000000:65:00.0"),
        ];
        let opencl = vec![
            cl("cpu", "0x1002", None),
            cl("gpu", "0x10de", Some("0000:65:00.0")),
            cl("gpu", "0x10de", Some("0000:17:00.0")),
        ];
        let gpus = merge(pci, nvml, &opencl);
        assert_eq!(gpus.len(), 3, "the CPU OpenCL device is not a GPU");
        assert_eq!(gpus[0].seen_by, vec!["pci", "nvml", "opencl"]);
        assert_eq!(gpus[0].opencl_device_indices, vec![2]);
        assert_eq!(gpus[1].opencl_device_indices, vec![1]);
        assert_eq!(gpus[0].name.as_deref(), Some("NVIDIA A100 80GB PCIe"));
        assert_eq!(gpus[0].memory_total_bytes, Some(80 << 30));
        let amd = &gpus[2];
        assert_eq!(amd.vendor, "AMD");
        assert_eq!(amd.driver, None);
        assert_eq!(amd.seen_by, vec!["pci"]);
    }

    #[test]
    fn laptop_intel_igpu_matched_by_vendor() {
        let pci = vec![
            pci_gpu("0000:00:02.0", "0x8086", "0x46a6", Some("i915")),
            pci_gpu("0000:01:00.0", "0x10de", "0x2520", Some("nvidia")),
        ];
        let nvml = vec![nvml_gpu(0, "00000000:01:00.0")];
        let opencl = vec![cl("gpu", "0x8086", None)];
        let gpus = merge(pci, nvml, &opencl);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].seen_by, vec!["pci", "opencl"]);
        assert_eq!(gpus[0].name.as_deref(), Some("gpu device"));
        assert_eq!(gpus[1].seen_by, vec!["pci", "nvml"]);
    }

    #[test]
    fn unmatched_devices_get_their_own_entries() {
        let gpus = merge(
            vec![],
            vec![nvml_gpu(0, "00000000:3b:00.0")],
            &[cl("gpu", "0x1002", None), cl("gpu", "0x1002", None)],
        );
        let ids: Vec<&str> = gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        assert_eq!(ids, vec!["0000:3b:00.0", "opencl:0", "opencl:1"]);
        assert_eq!(gpus[0].device_id, "0x20b5");
    }

    /// A fake NVML for the server fixture's two A100s (this machine has no NVIDIA GPU).
    #[derive(Debug)]
    struct FakeNvml(Vec<nvml::NvmlDevice>);

    impl nvml::NvmlSource for FakeNvml {
        fn devices(&self) -> Result<Vec<nvml::NvmlDevice>, nvml::NvmlUnavailable> {
            Ok(self.0.clone())
        }
    }

    #[derive(Debug)]
    struct FakeOpenCl(Vec<OpenClDevice>);

    impl opencl::OpenClSource for FakeOpenCl {
        fn devices(&self) -> Result<opencl::OpenClReport, opencl::OpenClUnavailable> {
            Ok(opencl::OpenClReport {
                devices: self.0.clone(),
                notes: vec!["platform \"Broken\": -1001".into()],
            })
        }
    }

    #[test]
    fn server_fixture_with_fake_nvml_and_opencl() {
        let root = FsRoot::new(format!(
            "{}/tests/fixtures/server-2s-smt",
            env!("CARGO_MANIFEST_DIR")
        ));
        let nvml = FakeNvml(vec![
            nvml_gpu(0, "00000000:17:00.0"),
            nvml_gpu(1, "00000000:65:00.0"),
        ]);
        let opencl = FakeOpenCl(vec![
            cl("gpu", "0x10de", Some("0000:17:00.0")),
            cl("cpu", "0x8086", None),
        ]);
        let mut notes = Notes::default();
        let inv = collect(&root, &nvml, &opencl, &mut notes).unwrap();
        assert_eq!(inv.gpus.len(), 3);
        assert_eq!(inv.gpus[0].name.as_deref(), Some("NVIDIA A100 80GB PCIe"));
        assert_eq!(inv.gpus[1].seen_by, vec!["pci", "nvml"]);
        assert_eq!(
            inv.gpus[2].name.as_deref(),
            Some("Aldebaran/MI200 [Instinct MI210]")
        );
        assert_eq!(inv.gpus[2].driver, None);
        assert_eq!(inv.opencl_devices.len(), 2);
        assert_eq!(inv.sources.nvml.status, ProbeStatus::Ok);
        assert_eq!(notes.as_slice(), ["opencl: platform \"Broken\": -1001"]);
    }

    #[test]
    fn failing_sources_are_reported_not_fatal() {
        let root = FsRoot::new(format!(
            "{}/tests/fixtures/laptop-hybrid",
            env!("CARGO_MANIFEST_DIR")
        ));
        let inv = collect(
            &root,
            &nvml::SkippedNvml,
            &opencl::SkippedOpenCl,
            &mut Notes::default(),
        )
        .unwrap();
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.gpus[0].vendor, "Intel");
        assert_eq!(
            inv.sources.nvml.reason.as_deref(),
            Some("skipped: not the live host")
        );
        let missing = FsRoot::new("/nonexistent-root");
        let inv = collect(
            &missing,
            &nvml::SkippedNvml,
            &opencl::SkippedOpenCl,
            &mut Notes::default(),
        )
        .unwrap();
        assert!(inv.gpus.is_empty());
        assert!(inv
            .sources
            .pci
            .reason
            .unwrap()
            .contains("/sys/bus/pci/devices"));
    }
}
