//! Merging the three sources into one [`Gpu`] per physical device.
//!
//! Rules:
//! 1. Every PCI display function is a GPU, keyed by its bus id.
//! 2. An NVML device joins the GPU with its (normalized) bus id; without a match (no sysfs, e.g.
//!    in a container) it is its own GPU, keyed by its bus id or `nvml:<index>` if it has none.
//! 3. An OpenCL device of type `cpu` is never a GPU. Any other OpenCL device joins the GPU with
//!    its bus id when the platform reports one. Without a bus id it joins the single GPU of the
//!    same PCI vendor id if there is exactly one; otherwise (none, or several: ambiguous) it is its
//!    own GPU keyed `opencl:<index>` (its index in `opencl_devices`). A bus id that matches nothing
//!    also makes its own GPU, keyed by that bus id.
//! 4. Name: NVML, then OpenCL, then pci.ids. Memory: NVML, then OpenCL global memory.

use super::nvml::NvmlDevice;
use super::opencl::OpenClDevice;
use super::pci::{parse_hex_id, vendor_short_name, PciGpu};
use super::Gpu;

/// PCI vendor id of NVIDIA.
const NVIDIA: u32 = 0x10de;

/// Merges the sources; the result is sorted by `pci_bus_id`.
pub fn merge(pci: Vec<PciGpu>, nvml: Vec<NvmlDevice>, opencl: &[OpenClDevice]) -> Vec<Gpu> {
    let mut gpus: Vec<Gpu> = pci.into_iter().map(from_pci).collect();
    for device in nvml {
        add_nvml(&mut gpus, device);
    }
    for (index, device) in opencl.iter().enumerate() {
        if device.device_type != "cpu" {
            add_opencl(&mut gpus, index, device);
        }
    }
    gpus.sort_by(|a, b| a.pci_bus_id.cmp(&b.pci_bus_id));
    gpus
}

fn from_pci(p: PciGpu) -> Gpu {
    Gpu {
        vendor: vendor_label(parse_hex_id(&p.vendor_id, 4).ok(), &p.vendor_id),
        name: p.device_name,
        pci_bus_id: p.bus_id,
        vendor_id: p.vendor_id,
        device_id: p.device_id,
        subsystem_vendor_id: p.subsystem_vendor_id,
        subsystem_device_id: p.subsystem_device_id,
        pci_class: Some(p.class),
        driver: p.driver,
        numa_node: p.numa_node,
        seen_by: vec!["pci".into()],
        ..Gpu::default()
    }
}

fn vendor_label(id: Option<u32>, fallback: &str) -> String {
    id.and_then(vendor_short_name)
        .map_or_else(|| fallback.to_owned(), str::to_owned)
}

fn add_nvml(gpus: &mut Vec<Gpu>, device: NvmlDevice) {
    let position = device
        .pci_bus_id
        .as_ref()
        .and_then(|id| gpus.iter().position(|g| &g.pci_bus_id == id));
    let gpu = match position {
        Some(i) => &mut gpus[i],
        None => {
            gpus.push(Gpu {
                pci_bus_id: device
                    .pci_bus_id
                    .clone()
                    .unwrap_or_else(|| format!("nvml:{}", device.index)),
                vendor: vendor_label(Some(NVIDIA), ""),
                vendor_id: format!("0x{NVIDIA:04x}"),
                ..Gpu::default()
            });
            let last = gpus.len() - 1;
            &mut gpus[last]
        }
    };
    if device.name.is_some() {
        gpu.name.clone_from(&device.name);
    }
    if device.memory_total_bytes.is_some() {
        gpu.memory_total_bytes = device.memory_total_bytes;
    }
    gpu.seen_by.push("nvml".into());
    gpu.nvml = Some(device);
}

fn add_opencl(gpus: &mut Vec<Gpu>, index: usize, device: &OpenClDevice) {
    let vendor_id = format!("0x{:04x}", device.vendor_id);
    let position = match &device.pci_bus_id {
        Some(id) => gpus.iter().position(|g| &g.pci_bus_id == id),
        None => {
            let mut same_vendor = gpus
                .iter()
                .enumerate()
                .filter(|(_, g)| g.vendor_id == vendor_id);
            match (same_vendor.next(), same_vendor.next()) {
                (Some((i, _)), None) => Some(i),
                _ => None,
            }
        }
    };
    let gpu = match position {
        Some(i) => &mut gpus[i],
        None => {
            gpus.push(Gpu {
                pci_bus_id: device
                    .pci_bus_id
                    .clone()
                    .unwrap_or_else(|| format!("opencl:{index}")),
                vendor: vendor_label(Some(device.vendor_id), &device.vendor),
                vendor_id,
                ..Gpu::default()
            });
            let last = gpus.len() - 1;
            &mut gpus[last]
        }
    };
    if gpu.nvml.is_none() && !device.name.is_empty() {
        gpu.name = Some(device.name.clone());
    }
    if gpu.memory_total_bytes.is_none() {
        gpu.memory_total_bytes = Some(device.global_memory_bytes);
    }
    if !gpu.seen_by.iter().any(|s| s == "opencl") {
        gpu.seen_by.push("opencl".into());
    }
    gpu.opencl_device_indices.push(index);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pci(bus: &str, vendor: &str, device: &str) -> PciGpu {
        PciGpu {
            bus_id: bus.into(),
            vendor_id: vendor.into(),
            device_id: device.into(),
            class: "0x030000".into(),
            device_name: Some(format!("pci name {device}")),
            ..PciGpu::default()
        }
    }

    fn cl(kind: &str, vendor_id: u32, bus: Option<&str>) -> OpenClDevice {
        OpenClDevice {
            device_type: kind.into(),
            name: format!("cl {vendor_id:x}"),
            vendor_id,
            global_memory_bytes: 1 << 30,
            pci_bus_id: bus.map(str::to_owned),
            ..OpenClDevice::default()
        }
    }

    #[test]
    fn cpu_opencl_device_is_never_a_gpu() {
        let gpus = merge(vec![], vec![], &[cl("cpu", 0x8086, None)]);
        assert!(gpus.is_empty());
    }

    #[test]
    fn name_priority_nvml_then_opencl_then_pci() {
        let nv = NvmlDevice {
            name: Some("NVIDIA A100".into()),
            pci_bus_id: Some("0000:17:00.0".into()),
            memory_total_bytes: Some(80 << 30),
            ..NvmlDevice::default()
        };
        let gpus = merge(
            vec![
                pci("0000:17:00.0", "0x10de", "0x20b5"),
                pci("0000:00:02.0", "0x8086", "0x46a6"),
                pci("0000:03:00.0", "0x1002", "0x740f"),
            ],
            vec![nv],
            &[
                cl("gpu", 0x10de, Some("0000:17:00.0")),
                cl("gpu", 0x8086, None),
            ],
        );
        let ids: Vec<_> = gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        assert_eq!(ids, ["0000:00:02.0", "0000:03:00.0", "0000:17:00.0"]);
        assert_eq!(gpus[2].name.as_deref(), Some("NVIDIA A100"));
        assert_eq!(gpus[2].memory_total_bytes, Some(80 << 30));
        assert_eq!(gpus[2].seen_by, ["pci", "nvml", "opencl"]);
        assert_eq!(gpus[2].opencl_device_indices, [0]);
        assert_eq!(gpus[0].name.as_deref(), Some("cl 8086"));
        assert_eq!(gpus[0].seen_by, ["pci", "opencl"]);
        assert_eq!(gpus[1].name.as_deref(), Some("pci name 0x740f"));
        assert_eq!(gpus[1].vendor, "AMD");
        assert_eq!(gpus[1].memory_total_bytes, None);
    }

    #[test]
    fn ambiguous_opencl_device_without_bus_id_is_its_own_gpu() {
        let gpus = merge(
            vec![
                pci("0000:17:00.0", "0x10de", "0x20b5"),
                pci("0000:65:00.0", "0x10de", "0x20b5"),
            ],
            vec![],
            &[cl("cpu", 0x8086, None), cl("gpu", 0x10de, None)],
        );
        assert_eq!(gpus.len(), 3);
        let own = gpus.iter().find(|g| g.pci_bus_id == "opencl:1").unwrap();
        assert_eq!(own.vendor, "NVIDIA");
        assert_eq!(own.seen_by, ["opencl"]);
        assert_eq!(own.opencl_device_indices, [1]);
    }

    #[test]
    fn nvml_only_devices_are_listed() {
        let gpus = merge(
            vec![],
            vec![
                NvmlDevice {
                    index: 0,
                    pci_bus_id: Some("0000:65:00.0".into()),
                    ..NvmlDevice::default()
                },
                NvmlDevice {
                    index: 1,
                    ..NvmlDevice::default()
                },
            ],
            &[],
        );
        let ids: Vec<_> = gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
        assert_eq!(ids, ["0000:65:00.0", "nvml:1"]);
        assert!(gpus
            .iter()
            .all(|g| g.vendor == "NVIDIA" && g.seen_by == ["nvml"]));
    }
}
