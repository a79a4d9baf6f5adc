//! Block devices from `/sys/block` (model, serial, size, rotational/SSD/NVMe, transport) and
//! mounted filesystems (type, size, free).

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError};
use crate::fsroot::FsRoot;

/// Disks and filesystems.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageInfo {
    /// Whole block devices (no partitions; no loop, ram or zram devices).
    pub block_devices: Vec<BlockDevice>,
    /// Mounted filesystems backed by a device (no pseudo filesystems).
    pub filesystems: Vec<Filesystem>,
}

/// One whole block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDevice {
    /// Kernel name, e.g. `nvme0n1`, `sda`, `vda`.
    pub name: String,
    /// Model string.
    pub model: Option<String>,
    /// Vendor string (SCSI/SATA).
    pub vendor: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// World wide name.
    pub wwn: Option<String>,
    /// Capacity.
    pub size_bytes: u64,
    /// `nvme`, `ssd`, `hdd` or `virtual`.
    pub kind: String,
    /// The kernel's `queue/rotational` flag (unreliable in VMs: virtio says rotational).
    pub rotational: bool,
    /// `nvme`, `sata`, `sas`, `scsi`, `usb`, `virtio`, `mmc`, ...
    pub transport: Option<String>,
    /// Removable media.
    pub removable: bool,
    /// Logical block size.
    pub logical_block_size_bytes: Option<u32>,
    /// Physical block size.
    pub physical_block_size_bytes: Option<u32>,
}

/// One mounted filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// Source device, e.g. `/dev/nvme0n1p2`.
    pub device: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// `ext4`, `xfs`, `btrfs`, ...
    pub fs_type: String,
    /// Total size.
    pub size_bytes: u64,
    /// Free bytes (including root-reserved blocks).
    pub free_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Collects the storage section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<StorageInfo, ProbeError> {
    let _ = (fs, notes);
    Err(ProbeError::Unavailable(
        "storage probe not built yet".into(),
    ))
}
