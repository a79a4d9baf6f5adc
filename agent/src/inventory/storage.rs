//! Block devices from `/sys/block` (model, serial, size, rotational/SSD/NVMe, transport) and
//! mounted filesystems from `/proc/self/mountinfo`, sized through sysinfo (statvfs) on the live
//! host.
//!
//! Only whole physical (or virtual-machine) disks are listed: partitions, loop, ram, zram,
//! device-mapper and md devices are logical views of those and would count capacity twice.

use std::collections::BTreeMap;

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
    /// Total size (statvfs; live host only).
    pub size_bytes: Option<u64>,
    /// Bytes available to unprivileged users (statvfs; live host only).
    pub available_bytes: Option<u64>,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Collects the storage section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<StorageInfo, ProbeError> {
    let mut block_devices = Vec::new();
    for name in fs.list_dir("/sys/block")? {
        if is_logical_device(&name) {
            continue;
        }
        match read_block_device(fs, &name) {
            Ok(Some(device)) => block_devices.push(device),
            Ok(None) => {}
            Err(err) => notes.add(&format!("/sys/block/{name}"), err.reason()),
        }
    }
    let filesystems = match fs.read_string("/proc/self/mountinfo") {
        Ok(text) => {
            let mut mounts = parse_mountinfo(&text);
            if fs.is_host() {
                fill_sizes(&mut mounts);
            } else {
                notes.add("filesystem sizes", "statvfs needs the live host");
            }
            mounts
        }
        Err(err) => {
            notes.add("filesystems", super::error_chain(&err));
            Vec::new()
        }
    };
    Ok(StorageInfo {
        block_devices,
        filesystems,
    })
}

/// Devices that are views of other disks, not disks.
fn is_logical_device(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "md", "nbd", "sr"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

fn read_block_device(fs: &FsRoot, name: &str) -> Result<Option<BlockDevice>, ProbeError> {
    let base = format!("/sys/block/{name}");
    let sectors: u64 = fs
        .read_trimmed(&format!("{base}/size"))?
        .parse()
        .map_err(|_| ProbeError::parse(format!("{base}/size"), "not a number"))?;
    if sectors == 0 {
        return Ok(None); // a reader without media
    }
    let rotational = fs.read_opt(&format!("{base}/queue/rotational")).as_deref() == Some("1");
    let path = fs
        .link_target(&base)
        .map(|target| target.to_string_lossy().into_owned())
        .unwrap_or_default();
    let transport = transport_from_path(name, &path);
    let vendor = fs.read_opt(&format!("{base}/device/vendor"));
    let model = fs.read_opt(&format!("{base}/device/model"));
    let kind = disk_kind(
        name,
        transport,
        rotational,
        vendor.as_deref(),
        model.as_deref(),
    );
    Ok(Some(BlockDevice {
        name: name.to_owned(),
        serial: read_serial(fs, name),
        wwn: fs
            .read_opt(&format!("{base}/wwid"))
            .or_else(|| fs.read_opt(&format!("{base}/device/wwid"))),
        size_bytes: sectors.saturating_mul(512),
        kind: kind.to_owned(),
        rotational,
        transport: transport.map(str::to_owned),
        removable: fs.read_opt(&format!("{base}/removable")).as_deref() == Some("1"),
        logical_block_size_bytes: fs
            .read_opt(&format!("{base}/queue/logical_block_size"))
            .and_then(|v| v.parse().ok()),
        physical_block_size_bytes: fs
            .read_opt(&format!("{base}/queue/physical_block_size"))
            .and_then(|v| v.parse().ok()),
        vendor,
        model,
    }))
}

/// Serial number: NVMe and virtio expose it in sysfs, SATA/SAS through udev's database.
fn read_serial(fs: &FsRoot, name: &str) -> Option<String> {
    let base = format!("/sys/block/{name}");
    fs.read_opt(&format!("{base}/device/serial"))
        .or_else(|| fs.read_opt(&format!("{base}/serial")))
        .or_else(|| {
            let dev = fs.read_opt(&format!("{base}/dev"))?;
            let udev = fs.read_string(&format!("/run/udev/data/b{dev}")).ok()?;
            udev_property(&udev, "ID_SERIAL_SHORT").or_else(|| udev_property(&udev, "ID_SERIAL"))
        })
        .filter(|s| !s.is_empty())
}

/// A property (`E:KEY=value`) of a udev database entry.
pub fn udev_property(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.strip_prefix("E:")?.split_once('=')?;
        (k == key).then(|| v.trim().to_owned())
    })
}

/// The bus a disk hangs off, from its resolved sysfs path.
pub fn transport_from_path(name: &str, path: &str) -> Option<&'static str> {
    if name.starts_with("nvme") || path.contains("/nvme/") {
        Some("nvme")
    } else if path.contains("/usb") {
        Some("usb")
    } else if path.contains("/virtio") {
        Some("virtio")
    } else if path.contains("/vbd-") || name.starts_with("xvd") {
        Some("xen")
    } else if path.contains("/mmc_host/") || name.starts_with("mmcblk") {
        Some("mmc")
    } else if path.contains("/ata") {
        Some("sata")
    } else if path.contains("/end_device-") || path.contains("/sas_") {
        Some("sas")
    } else if path.contains("/target") {
        Some("scsi")
    } else {
        None
    }
}

/// `nvme`, `virtual`, `ssd` or `hdd`. The rotational flag is only believed for real buses:
/// virtio and Xen disks report rotational whatever backs them.
pub fn disk_kind(
    name: &str,
    transport: Option<&str>,
    rotational: bool,
    vendor: Option<&str>,
    model: Option<&str>,
) -> &'static str {
    const VIRTUAL_VENDORS: [&str; 5] = ["QEMU", "VMware", "Msft", "VBOX", "Google"];
    let virtual_vendor = vendor
        .into_iter()
        .chain(model)
        .any(|v| VIRTUAL_VENDORS.iter().any(|known| v.contains(known)));
    if name.starts_with("nvme") || transport == Some("nvme") {
        "nvme"
    } else if matches!(transport, Some("virtio" | "xen")) || virtual_vendor {
        "virtual"
    } else if rotational {
        "hdd"
    } else {
        "ssd"
    }
}

/// Filesystem types that live on a block device even when the source is not `/dev/...`.
const BLOCK_FS_TYPES: [&str; 14] = [
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "vfat", "exfat", "ntfs", "ntfs3", "jfs",
    "reiserfs", "bcachefs",
];

/// Device-backed mounts from mountinfo, one per device: the mount of the device's root
/// (`root` field `/`) with the shortest mount point wins; bind mounts of the same device are the
/// same filesystem and are not listed again.
pub fn parse_mountinfo(text: &str) -> Vec<Filesystem> {
    // device number -> (is root of the fs, mount point length, entry)
    let mut best: BTreeMap<String, (bool, usize, Filesystem)> = BTreeMap::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(dev), Some(root), Some(mount_point), Some(options)) =
            (left.get(2), left.get(3), left.get(4), left.get(5))
        else {
            continue;
        };
        let (Some(fs_type), Some(source)) = (right.first(), right.get(1)) else {
            continue;
        };
        if !source.starts_with("/dev/") && !BLOCK_FS_TYPES.contains(fs_type) {
            continue;
        }
        let entry = Filesystem {
            device: unescape_mount(source),
            mount_point: unescape_mount(mount_point),
            fs_type: (*fs_type).to_owned(),
            size_bytes: None,
            available_bytes: None,
            read_only: options.split(',').any(|o| o == "ro"),
        };
        let rank = (*root == "/", usize::MAX - entry.mount_point.len());
        match best.get(*dev) {
            Some((is_root, len, _)) if (*is_root, usize::MAX - len) >= rank => {}
            _ => {
                best.insert((*dev).to_owned(), (rank.0, entry.mount_point.len(), entry));
            }
        }
    }
    let mut list: Vec<Filesystem> = best.into_values().map(|(_, _, fs)| fs).collect();
    list.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    list
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sizes from statvfs through sysinfo, matched by mount point.
fn fill_sizes(mounts: &mut [Filesystem]) {
    let refresh = sysinfo::DiskRefreshKind::nothing().with_storage();
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list_specifics(refresh) else {
        return;
    };
    for mount in mounts {
        if let Some(disk) = disks
            .iter()
            .find(|d| d.mount_point() == std::path::Path::new(&mount.mount_point))
        {
            mount.size_bytes = Some(disk.total_space());
            mount.available_bytes = Some(disk.available_space());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 254:0 /var/lib/x /srv/bind rw - ext4 /dev/vda rw
41 27 259:2 / /boot/efi ro,relatime - vfat /dev/nvme0n1p1 rw
42 27 0:50 / /tank rw - zfs tank/data rw
43 27 259:3 / /mnt/my\\040disk rw - xfs /dev/nvme0n1p3 rw
44 27 0:33 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
garbage line
";

    #[test]
    fn mountinfo_keeps_device_backed_mounts_once() {
        let list = parse_mountinfo(MOUNTINFO);
        let points: Vec<&str> = list.iter().map(|f| f.mount_point.as_str()).collect();
        assert_eq!(points, vec!["/", "/boot/efi", "/mnt/my disk", "/tank"]);
        assert!(list[1].read_only);
        assert_eq!(list[0].device, "/dev/vda");
        assert_eq!(list[3].fs_type, "zfs");
    }

    #[test]
    fn transports_and_kinds() {
        let nvme = "../devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1";
        assert_eq!(transport_from_path("nvme0n1", nvme), Some("nvme"));
        let sata = "../devices/pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0/block/sda";
        assert_eq!(transport_from_path("sda", sata), Some("sata"));
        let usb = "../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host4/target4:0:0/4:0:0:0/block/sdb";
        assert_eq!(transport_from_path("sdb", usb), Some("usb"));
        let virtio = "../devices/pci0000:00/0000:00:02.0/virtio1/block/vda";
        assert_eq!(transport_from_path("vda", virtio), Some("virtio"));
        assert_eq!(
            disk_kind("vda", Some("virtio"), true, None, None),
            "virtual"
        );
        assert_eq!(
            disk_kind("sda", Some("sata"), false, Some("ATA"), None),
            "ssd"
        );
        assert_eq!(
            disk_kind("sdc", Some("sas"), true, Some("SEAGATE"), None),
            "hdd"
        );
        assert_eq!(
            disk_kind(
                "sdd",
                Some("scsi"),
                true,
                Some("QEMU"),
                Some("QEMU HARDDISK")
            ),
            "virtual"
        );
        assert_eq!(disk_kind("nvme0n1", None, false, None, None), "nvme");
    }

    #[test]
    fn udev_serials() {
        let data = "S:disk/by-id/ata-X\nE:ID_SERIAL=Samsung_SSD_870_S5Y1NX0R\nE:ID_SERIAL_SHORT=S5Y1NX0R\n";
        assert_eq!(
            udev_property(data, "ID_SERIAL_SHORT").as_deref(),
            Some("S5Y1NX0R")
        );
        assert_eq!(udev_property(data, "ID_MODEL"), None);
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape_mount("a\\040b"), "a b");
        assert_eq!(unescape_mount("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_mount("\\"), "\\");
        assert_eq!(unescape_mount("\\999x"), "\\999x");
    }

    #[test]
    fn live_host_lists_sys_block_disks() {
        let info = collect(&FsRoot::host(), &mut Notes::default()).unwrap();
        for entry in std::fs::read_dir("/sys/block").unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let size: u64 = std::fs::read_to_string(format!("/sys/block/{name}/size"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let listed = info.block_devices.iter().find(|d| d.name == name);
            if is_logical_device(&name) || size == 0 {
                assert!(listed.is_none(), "{name} should not be listed");
            } else {
                assert_eq!(listed.unwrap().size_bytes, size * 512, "{name}");
            }
        }
        let root = info
            .filesystems
            .iter()
            .find(|f| f.mount_point == "/")
            .unwrap();
        assert!(root.size_bytes.unwrap() > 0);
    }

    #[test]
    fn server_fixture_disks() {
        let root = FsRoot::new(format!(
            "{}/tests/fixtures/server-2s-smt",
            env!("CARGO_MANIFEST_DIR")
        ));
        let mut notes = Notes::default();
        let info = collect(&root, &mut notes).unwrap();
        let summary: Vec<(&str, &str, Option<&str>, Option<&str>)> = info
            .block_devices
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.kind.as_str(),
                    d.transport.as_deref(),
                    d.serial.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("nvme0n1", "nvme", Some("nvme"), Some("S64HNE0R812345")),
                ("sda", "ssd", Some("sata"), Some("S5Y1NX0R600123")),
                ("sdb", "hdd", Some("sas"), Some("ZL2ABCDE")),
            ]
        );
        assert_eq!(info.block_devices[0].size_bytes, 7_501_476_528 * 512);
        let mounts: Vec<&str> = info
            .filesystems
            .iter()
            .map(|f| f.mount_point.as_str())
            .collect();
        assert_eq!(mounts, vec!["/", "/boot/efi", "/data"]);
        assert!(notes
            .as_slice()
            .iter()
            .any(|n| n.starts_with("filesystem sizes")));
    }
}
