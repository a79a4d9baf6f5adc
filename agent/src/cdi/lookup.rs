//! Which CDI device is a given GPU.
//!
//! Jobs and the inventory name GPUs by PCI bus id (and NVIDIA ones by UUID); CDI specs name
//! devices as their tool chose: nvidia-ctk writes each GPU as its index (`nvidia.com/gpu=0`)
//! and its UUID (`nvidia.com/gpu=GPU-...`), MIG instances as `0:1` and `MIG-...`, plus `all`;
//! AMD's tool writes indices whose nodes are `/dev/dri/renderD*`. The rule, first match wins:
//! 1. a device named by the GPU's UUID (case-insensitive; the UUID from NVML, or from the
//!    driver's `/proc/driver/nvidia/gpus/<bus>/information`);
//! 2. a device with the node `/dev/nvidia<minor>` (host path, or `195:<minor>` when the spec
//!    gives numbers), the minor from that same `/proc` file;
//! 3. a device named by the PCI bus id (either form: `0000:17:00.0` or NVML's
//!    `00000000:17:00.0`);
//! 4. a device with a `/dev/dri/<node>` node whose `/sys/class/drm/<node>/device` is the GPU's
//!    PCI function (AMD, Intel).
//!
//! Where several devices match by node (2, 4), the one with the fewest device nodes wins, then
//! the first by name: the whole GPU rather than `all`, and rather than a MIG instance (which
//! adds `/dev/nvidia-caps` nodes to its GPU's).

use super::{Device, Registry};
use crate::fsroot::FsRoot;

/// Major number of NVIDIA's character devices.
const NVIDIA_MAJOR: i64 = 195;

/// A GPU as the caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct GpuKey<'a> {
    /// PCI bus id.
    pub pci_bus_id: &'a str,
    /// NVIDIA UUID, when known.
    pub uuid: Option<&'a str>,
}

/// What the NVIDIA driver's `/proc/driver/nvidia/gpus/<bus>/information` says of a GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvidiaProcInfo {
    /// `Device Minor`: the N of `/dev/nvidiaN`.
    pub minor: Option<i64>,
    /// `GPU UUID`.
    pub uuid: Option<String>,
}

/// Reads the driver's information file of the GPU at `pci_bus_id` (empty when absent).
pub fn nvidia_proc_info(fs: &FsRoot, pci_bus_id: &str) -> NvidiaProcInfo {
    let path = format!("/proc/driver/nvidia/gpus/{pci_bus_id}/information");
    let Some(text) = fs.read_string(&path).ok() else {
        return NvidiaProcInfo::default();
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    NvidiaProcInfo {
        minor: field("Device Minor").and_then(|v| v.parse().ok()),
        uuid: field("GPU UUID"),
    }
}

/// A PCI bus id in the inventory's form: lowercase, 4-digit domain.
pub fn normalize_bus_id(id: &str) -> String {
    let id = id.to_ascii_lowercase();
    match id.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => id,
    }
}

/// The CDI device of a GPU (see the module doc for the rule).
pub fn find_gpu_device<'r>(
    registry: &'r Registry,
    fs: &FsRoot,
    gpu: GpuKey<'_>,
) -> Option<&'r Device> {
    let devices = || registry.devices.values();
    let info = nvidia_proc_info(fs, gpu.pci_bus_id);
    let uuid = gpu.uuid.map(str::to_owned).or(info.uuid);
    if let Some(uuid) = uuid {
        if let Some(device) = devices().find(|d| d.name.eq_ignore_ascii_case(&uuid)) {
            return Some(device);
        }
    }
    if let Some(minor) = info.minor {
        let node = format!("/dev/nvidia{minor}");
        let found = fewest_nodes(devices().filter(|d| {
            d.edits.device_nodes.iter().any(|n| {
                n.host() == node || (n.major == Some(NVIDIA_MAJOR) && n.minor == Some(minor))
            })
        }));
        if found.is_some() {
            return found;
        }
    }
    let bus = normalize_bus_id(gpu.pci_bus_id);
    if let Some(device) = devices().find(|d| normalize_bus_id(&d.name) == bus) {
        return Some(device);
    }
    fewest_nodes(devices().filter(|d| {
        d.edits.device_nodes.iter().any(|n| {
            n.host()
                .strip_prefix("/dev/dri/")
                .filter(|name| !name.is_empty() && !name.contains('/'))
                .and_then(|name| fs.link_name(&format!("/sys/class/drm/{name}/device")))
                .is_some_and(|linked| normalize_bus_id(&linked) == bus)
        })
    }))
}

fn fewest_nodes<'r>(candidates: impl Iterator<Item = &'r Device>) -> Option<&'r Device> {
    // Registry order is by qualified name, and min_by_key keeps the first of equals.
    candidates.min_by_key(|d| d.edits.device_nodes.len())
}
