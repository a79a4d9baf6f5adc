//! Display controllers on the PCI bus (`/sys/bus/pci/devices`, class 0x03xx), with vendor and
//! device names from the pci.ids database. This is what makes a card without a driver visible.
//!
//! A missing `/sys/bus/pci/devices` means "no PCI bus readable" (source unavailable); an empty
//! one means "ok, no display controllers".

use serde::{Deserialize, Serialize};

use crate::fsroot::{FsError, FsRoot};

/// Where the PCI id database lives (below the root).
pub const PCI_IDS_PATH: &str = "/usr/share/misc/pci.ids";

/// One display-class PCI function.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PciGpu {
    /// `dddd:bb:dd.f`, lowercase.
    pub bus_id: String,
    /// e.g. `0x10de`.
    pub vendor_id: String,
    /// e.g. `0x20b5`.
    pub device_id: String,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: Option<String>,
    /// Subsystem device id.
    pub subsystem_device_id: Option<String>,
    /// e.g. `0x030200`.
    pub class: String,
    /// Bound kernel driver.
    pub driver: Option<String>,
    /// NUMA node (`-1` in sysfs means none and becomes `None`).
    pub numa_node: Option<i32>,
    /// e.g. `16.0 GT/s PCIe`.
    pub current_link_speed: Option<String>,
    /// Current link width.
    pub current_link_width: Option<u32>,
    /// Maximum link speed.
    pub max_link_speed: Option<String>,
    /// Maximum link width.
    pub max_link_width: Option<u32>,
    /// The firmware's boot display.
    pub boot_vga: bool,
    /// Device name from pci.ids.
    pub device_name: Option<String>,
}

/// Why a PCI attribute is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciParseError {
    /// Not `0x` followed by hex digits of the expected width.
    #[error("not a {width}-digit hex id: {text:?}")]
    BadHex {
        /// The text.
        text: String,
        /// Expected number of digits.
        width: usize,
    },
    /// Not a PCI address.
    #[error("not a PCI bus id: {0:?}")]
    BadBusId(String),
}

/// Why a display-class PCI function was left out of the inventory.
#[derive(Debug, thiserror::Error)]
pub enum PciFunctionError {
    /// A required attribute (`vendor`, `device`) could not be read.
    #[error(transparent)]
    Read(#[from] FsError),
    /// An id attribute is not a hex id.
    #[error("{attr}: {reason}")]
    BadId {
        /// The attribute (`vendor`, `device`, ...).
        attr: &'static str,
        /// What is wrong with it.
        reason: PciParseError,
    },
}

/// Parses a sysfs id attribute (`0x10de`, `0x030200`) into its value.
pub fn parse_hex_id(text: &str, width: usize) -> Result<u32, PciParseError> {
    let bad = || PciParseError::BadHex {
        text: text.to_owned(),
        width,
    };
    let digits = text.trim().strip_prefix("0x").ok_or_else(bad)?;
    if digits.len() != width || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u32::from_str_radix(digits, 16).map_err(|_| bad())
}

/// True for PCI class 0x03xxxx (VGA, XGA, 3D, other display controller).
pub fn is_display_class(class: u32) -> bool {
    class >> 16 == 0x03
}

/// Normalizes `00000000:65:00.0`, `0000:65:00.0` or `65:00.0` to `0000:65:00.0` lowercase.
pub fn normalize_bus_id(text: &str) -> Result<String, PciParseError> {
    let bad = || PciParseError::BadBusId(text.to_owned());
    let text = text.trim();
    let (rest, function) = text.rsplit_once('.').ok_or_else(bad)?;
    let mut parts: Vec<&str> = rest.split(':').collect();
    if parts.len() == 2 {
        parts.insert(0, "0");
    }
    let [domain, bus, device] = parts.as_slice() else {
        return Err(bad());
    };
    let hex = |s: &str, max: u32| {
        (!s.is_empty() && s.len() <= 8)
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
            .filter(|v| *v <= max)
            .ok_or_else(bad)
    };
    Ok(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        hex(domain, 0xffff)?,
        hex(bus, 0xff)?,
        hex(device, 0x1f)?,
        hex(function, 7)?
    ))
}

/// Builds a bus id from the numeric parts OpenCL extensions report.
pub fn bus_id_from_parts(domain: u32, bus: u32, device: u32, function: u32) -> String {
    format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}")
}

/// The vendor's short name for well-known GPU vendors.
pub fn vendor_short_name(vendor_id: u32) -> Option<&'static str> {
    match vendor_id {
        0x10de => Some("NVIDIA"),
        0x1002 | 0x1022 => Some("AMD"),
        0x8086 => Some("Intel"),
        0x1af4 => Some("Red Hat (virtio)"),
        0x1234 => Some("QEMU"),
        0x15ad => Some("VMware"),
        0x1a03 => Some("ASPEED"),
        0x102b => Some("Matrox"),
        0x5143 => Some("Qualcomm"),
        0x13b5 => Some("ARM"),
        _ => None,
    }
}

/// Looks up the device name of `vendor:device` in pci.ids text, scanning only that vendor's block.
/// Vendor lines are `vvvv  Name` (lowercase hex, as pci.ids is written), device lines
/// `\tdddd  Name`, subsystem lines `\t\t...`. The vendor line is found by a substring search, so
/// the 1.3 MB database is never split into lines or maps.
pub fn lookup_device_name(ids: &str, vendor: u32, device: u32) -> Option<String> {
    let vendor_key = format!("{vendor:04x}");
    let device_key = format!("{device:04x}");
    let needle = format!("\n{vendor_key} ");
    let start = if ids.starts_with(&needle[1..]) {
        0
    } else {
        ids.find(&needle)? + 1
    };
    let mut lines = ids[start..].lines();
    lines.next().and_then(|line| id_line(line, &vendor_key))?;
    for line in lines {
        if line.starts_with('#') || line.is_empty() || line.starts_with("\t\t") {
            continue;
        }
        let Some(entry) = line.strip_prefix('\t') else {
            return None; // the next vendor: the device is not listed
        };
        if let Some(name) = id_line(entry, &device_key) {
            return Some(name.to_owned());
        }
    }
    None
}

/// `key  Name` -> `Name` when the line's id is `key` (case-insensitive).
fn id_line<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let (id, name) = line.split_once(char::is_whitespace)?;
    let name = name.trim();
    (id.eq_ignore_ascii_case(key) && !name.is_empty()).then_some(name)
}

/// Every display-class function below `fs`, with names from pci.ids (a missing database is a
/// note, not an error). Fails only when `/sys/bus/pci/devices` cannot be listed.
pub fn collect(fs: &FsRoot, notes: &mut super::Notes) -> Result<Vec<PciGpu>, FsError> {
    const DEVICES: &str = "/sys/bus/pci/devices";
    let mut gpus = Vec::new();
    for entry in fs.list_dir(DEVICES)? {
        let Ok(bus_id) = normalize_bus_id(&entry) else {
            continue;
        };
        let dir = format!("{DEVICES}/{entry}");
        let class = match fs.read_trimmed(&format!("{dir}/class")) {
            Ok(text) => match parse_hex_id(&text, 6) {
                Ok(class) => class,
                Err(err) => {
                    notes.add(&format!("{dir}/class"), err);
                    continue;
                }
            },
            Err(err) => {
                notes.add(&format!("{dir}/class"), crate::inventory::error_chain(&err));
                continue;
            }
        };
        if !is_display_class(class) {
            continue;
        }
        match read_function(fs, &dir, bus_id, class) {
            Ok(gpu) => gpus.push(gpu),
            Err(err) => notes.add(&dir, crate::inventory::error_chain(&err)),
        }
    }
    name_devices(fs, &mut gpus, notes);
    Ok(gpus)
}

fn read_function(
    fs: &FsRoot,
    dir: &str,
    bus_id: String,
    class: u32,
) -> Result<PciGpu, PciFunctionError> {
    let id = |attr: &'static str| -> Result<String, PciFunctionError> {
        let text = fs.read_trimmed(&format!("{dir}/{attr}"))?;
        parse_hex_id(&text, 4)
            .map(|v| format!("0x{v:04x}"))
            .map_err(|reason| PciFunctionError::BadId { attr, reason })
    };
    let opt_u32 = |attr: &str| {
        fs.read_opt(&format!("{dir}/{attr}"))
            .and_then(|s| s.parse().ok())
    };
    let numa_node = fs
        .read_opt(&format!("{dir}/numa_node"))
        .and_then(|s| s.parse::<i32>().ok())
        .filter(|n| *n >= 0);
    Ok(PciGpu {
        bus_id,
        vendor_id: id("vendor")?,
        device_id: id("device")?,
        subsystem_vendor_id: id("subsystem_vendor").ok(),
        subsystem_device_id: id("subsystem_device").ok(),
        class: format!("0x{class:06x}"),
        driver: fs.link_name(&format!("{dir}/driver")),
        numa_node,
        current_link_speed: fs.read_opt(&format!("{dir}/current_link_speed")),
        current_link_width: opt_u32("current_link_width"),
        max_link_speed: fs.read_opt(&format!("{dir}/max_link_speed")),
        max_link_width: opt_u32("max_link_width"),
        boot_vga: fs.read_opt(&format!("{dir}/boot_vga")).as_deref() == Some("1"),
        device_name: None,
    })
}

/// Fills `device_name` from pci.ids; reads the database only if there is something to name.
fn name_devices(fs: &FsRoot, gpus: &mut [PciGpu], notes: &mut super::Notes) {
    if gpus.is_empty() {
        return;
    }
    let ids = match fs.read_string(PCI_IDS_PATH) {
        Ok(ids) => ids,
        Err(err) => {
            notes.add("pci.ids", crate::inventory::error_chain(&err));
            return;
        }
    };
    for gpu in gpus {
        let (Ok(v), Ok(d)) = (
            parse_hex_id(&gpu.vendor_id, 4),
            parse_hex_id(&gpu.device_id, 4),
        ) else {
            continue;
        };
        gpu.device_name = lookup_device_name(&ids, v, d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment\n\
10de  NVIDIA Corporation\n\
\t20b5  GA100 [A100 PCIe 80GB]\n\
\t\t10de 1533  A100 80GB PCIe\n\
\t2520  GA106M [GeForce RTX 3060 Mobile / Max-Q]\n\
10df  Emulex Corporation\n\
\t20b5  Not the NVIDIA one\n\
C 03  Display controller\n\
\t00  VGA compatible controller\n";

    #[test]
    fn hex_ids() {
        assert_eq!(parse_hex_id("0x10de\n", 4), Ok(0x10de));
        assert_eq!(parse_hex_id("0x030200", 6), Ok(0x030200));
        assert!(parse_hex_id("10de", 4).is_err());
        assert!(parse_hex_id("0x10d", 4).is_err());
        assert!(parse_hex_id("0xzzzz", 4).is_err());
        assert!(parse_hex_id("", 4).is_err());
        assert!(parse_hex_id("0x+10d", 4).is_err());
    }

    #[test]
    fn display_class_filter() {
        assert!(is_display_class(0x030000));
        assert!(is_display_class(0x030200));
        assert!(is_display_class(0x038000));
        assert!(!is_display_class(0x060000));
        assert!(!is_display_class(0x010601));
    }

    #[test]
    fn bus_id_normalization() {
        assert_eq!(
            normalize_bus_id("00000000:65:00.0").unwrap(),
            "0000:65:00.0"
        );
        assert_eq!(normalize_bus_id("0000:CA:00.0").unwrap(), "0000:ca:00.0");
        assert_eq!(normalize_bus_id("01:00.1").unwrap(), "0000:01:00.1");
        assert_eq!(normalize_bus_id(" 0000:17:00.0\n").unwrap(), "0000:17:00.0");
        for bad in [
            "",
            "garbage",
            "0000:65:00",
            "0000:65:00.8",
            "0000:100:00.0",
            "0000:65:20.0",
        ] {
            assert!(normalize_bus_id(bad).is_err(), "{bad}");
        }
        assert!(normalize_bus_id("1:2:3:4.0").is_err());
        assert!(normalize_bus_id("0000::00.0").is_err());
    }

    #[test]
    fn pci_ids_lookup_scans_only_the_vendor_block() {
        assert_eq!(
            lookup_device_name(IDS, 0x10de, 0x20b5).as_deref(),
            Some("GA100 [A100 PCIe 80GB]")
        );
        assert_eq!(
            lookup_device_name(IDS, 0x10de, 0x2520).as_deref(),
            Some("GA106M [GeForce RTX 3060 Mobile / Max-Q]")
        );
        assert_eq!(
            lookup_device_name(IDS, 0x10df, 0x20b5).as_deref(),
            Some("Not the NVIDIA one")
        );
        assert_eq!(lookup_device_name(IDS, 0x10de, 0x1533), None);
        assert_eq!(lookup_device_name(IDS, 0x1002, 0x740f), None);
        assert_eq!(lookup_device_name("", 0x10de, 0x20b5), None);
        assert_eq!(lookup_device_name("10de\n\t20b5\n", 0x10de, 0x20b5), None);
        assert_eq!(
            lookup_device_name("10de  N\n\t20b5\n", 0x10de, 0x20b5),
            None
        );
        assert_eq!(
            lookup_device_name("10de  N\n\t20b5  A\n", 0x10de, 0x20b5).as_deref(),
            Some("A")
        );
        // A subsystem line with the same id is not a device line.
        assert_eq!(
            lookup_device_name("10de  N\n\t\t2520 20b5  S\n", 0x10de, 0x2520),
            None
        );
    }

    #[test]
    fn malformed_functions_become_notes_and_the_rest_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let devices = dir.path().join("sys/bus/pci/devices");
        let write = |addr: &str, attrs: &[(&str, &str)]| {
            let d = devices.join(addr);
            std::fs::create_dir_all(&d).unwrap();
            for (name, value) in attrs {
                std::fs::write(d.join(name), format!("{value}\n")).unwrap();
            }
        };
        write("0000:00:01.0", &[("class", "garbage")]);
        write(
            "0000:00:02.0",
            &[("class", "0x030000"), ("vendor", "0x10de")],
        );
        write(
            "0000:00:03.0",
            &[
                ("class", "0x030200"),
                ("vendor", "0x10de"),
                ("device", "0x20b5"),
                ("numa_node", "-1"),
                ("current_link_width", "x16"),
            ],
        );
        write("0000:00:04.0", &[]);
        std::fs::create_dir_all(devices.join("not-an-address")).unwrap();
        let fs = FsRoot::new(dir.path());
        let mut notes = super::super::Notes::default();
        let gpus = collect(&fs, &mut notes).unwrap();
        assert_eq!(gpus.len(), 1);
        let gpu = &gpus[0];
        assert_eq!(gpu.bus_id, "0000:00:03.0");
        assert_eq!(gpu.numa_node, None);
        assert_eq!(gpu.current_link_width, None);
        assert_eq!(gpu.subsystem_vendor_id, None);
        assert_eq!(gpu.device_name, None);
        let notes = notes.as_slice();
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(
            notes[0].contains("0000:00:01.0/class: not a 6-digit hex id"),
            "{notes:?}"
        );
        assert!(
            notes[1].contains("0000:00:02.0") && notes[1].contains("device"),
            "{notes:?}"
        );
        assert!(notes[2].contains("0000:00:04.0/class"), "{notes:?}");
        assert!(notes[3].starts_with("pci.ids: cannot read"), "{notes:?}");
    }
}
