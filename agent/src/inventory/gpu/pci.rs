//! Display controllers on the PCI bus (`/sys/bus/pci/devices`, class 0x03xxxx): found whether or
//! not a driver is bound, so a card whose driver is missing still shows up. Names come from the
//! pci.ids database when it is installed.

use crate::fsroot::FsRoot;

/// One display-class PCI function.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PciDisplay {
    /// `dddd:bb:dd.f`, lowercase.
    pub bus_id: String,
    /// Class code, e.g. `0x030000`.
    pub class: String,
    /// Vendor id, e.g. `0x10de`.
    pub vendor_id: String,
    /// Device id.
    pub device_id: String,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: Option<String>,
    /// Subsystem device id.
    pub subsystem_device_id: Option<String>,
    /// Bound kernel driver.
    pub driver: Option<String>,
    /// NUMA node (absent when the kernel says -1).
    pub numa_node: Option<i32>,
    /// Device name from pci.ids.
    pub name: Option<String>,
}

/// Where pci.ids lives on Debian (pciutils) and on distributions with hwdata.
const PCI_IDS: [&str; 2] = ["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// Scans the bus for display controllers, sorted by address.
pub fn scan(fs: &FsRoot) -> Result<Vec<PciDisplay>, crate::fsroot::FsError> {
    let dir = "/sys/bus/pci/devices";
    let mut found = Vec::new();
    for address in fs.list_dir(dir)? {
        let base = format!("{dir}/{address}");
        let Some(class) = fs.read_opt(&format!("{base}/class")) else {
            continue;
        };
        if !is_display_class(&class) {
            continue;
        }
        let (Some(vendor_id), Some(device_id)) = (
            fs.read_opt(&format!("{base}/vendor")),
            fs.read_opt(&format!("{base}/device")),
        ) else {
            continue;
        };
        found.push(PciDisplay {
            bus_id: address.to_lowercase(),
            class,
            vendor_id: vendor_id.to_lowercase(),
            device_id: device_id.to_lowercase(),
            subsystem_vendor_id: fs
                .read_opt(&format!("{base}/subsystem_vendor"))
                .map(|v| v.to_lowercase()),
            subsystem_device_id: fs
                .read_opt(&format!("{base}/subsystem_device"))
                .map(|v| v.to_lowercase()),
            driver: fs.link_name(&format!("{base}/driver")),
            numa_node: fs
                .read_opt(&format!("{base}/numa_node"))
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| *n >= 0),
            name: None,
        });
    }
    if !found.is_empty() {
        if let Some(ids) = PCI_IDS.iter().find_map(|path| fs.read_string(path).ok()) {
            for device in &mut found {
                device.name = lookup_name(&ids, &device.vendor_id, &device.device_id);
            }
        }
    }
    Ok(found)
}

/// PCI base class 0x03: VGA (0x0300), XGA, 3D controller (0x0302), other display (0x0380).
pub fn is_display_class(class: &str) -> bool {
    let hex = class.trim().trim_start_matches("0x");
    hex.len() == 6 && hex.starts_with("03")
}

/// The device name for `vendor:device` in pci.ids text (`0x10de`, `0x20b5` forms accepted).
/// Scans only the vendor's block.
pub fn lookup_name(ids: &str, vendor_id: &str, device_id: &str) -> Option<String> {
    let vendor = vendor_id.trim_start_matches("0x");
    let device = device_id.trim_start_matches("0x");
    let mut in_vendor = false;
    for line in ids.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if !line.starts_with('\t') {
            if in_vendor {
                return None; // left the vendor's block
            }
            in_vendor = line
                .get(..4)
                .is_some_and(|v| v.eq_ignore_ascii_case(vendor))
                && line.as_bytes().get(4) == Some(&b' ');
            continue;
        }
        if in_vendor && !line.starts_with("\t\t") {
            let entry = &line[1..];
            if entry
                .get(..4)
                .is_some_and(|d| d.eq_ignore_ascii_case(device))
            {
                return entry.get(4..).map(|name| name.trim().to_owned());
            }
        }
    }
    None
}

/// The marketing vendor of a PCI vendor id.
pub fn vendor_name(vendor_id: &str) -> String {
    match vendor_id.trim_start_matches("0x").to_lowercase().as_str() {
        "10de" => "NVIDIA".to_owned(),
        "1002" => "AMD".to_owned(),
        "8086" => "Intel".to_owned(),
        "1a03" => "ASPEED".to_owned(),
        "102b" => "Matrox".to_owned(),
        "1af4" => "Red Hat (virtio)".to_owned(),
        "1234" => "QEMU".to_owned(),
        "15ad" => "VMware".to_owned(),
        "5143" => "Qualcomm".to_owned(),
        "1ed5" => "Moore Threads".to_owned(),
        other => format!("0x{other}"),
    }
}

/// Normalizes a PCI address to `dddd:bb:dd.f` lowercase: NVML writes an 8-digit domain
/// (`00000000:65:00.0`), some tools omit the domain (`65:00.0`).
pub fn normalize_bus_id(id: &str) -> Option<String> {
    let id = id.trim().to_lowercase();
    let mut parts = id.rsplitn(3, ':');
    let dev_fn = parts.next()?;
    let bus = parts.next()?;
    let domain = parts.next().unwrap_or("0");
    let (dev, func) = dev_fn.split_once('.')?;
    let domain = u32::from_str_radix(domain, 16).ok()?;
    let bus = u32::from_str_radix(bus, 16).ok()?;
    let dev = u32::from_str_radix(dev, 16).ok()?;
    let func = u32::from_str_radix(func, 16).ok()?;
    (bus <= 0xff && dev <= 0x1f && func <= 7)
        .then(|| format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment\n10de  NVIDIA Corporation\n\t20b5  GA100 [A100 PCIe 80GB]\n\t\t10de 1533  A100 80GB PCIe\n\t2520  GA106M [GeForce RTX 3060 Mobile / Max-Q]\n1002  Advanced Micro Devices, Inc. [AMD/ATI]\n\t740f  Aldebaran/MI200 [Instinct MI210]\n";

    #[test]
    fn pci_ids_lookup() {
        assert_eq!(
            lookup_name(IDS, "0x10de", "0x20b5").as_deref(),
            Some("GA100 [A100 PCIe 80GB]")
        );
        assert_eq!(
            lookup_name(IDS, "1002", "740F").as_deref(),
            Some("Aldebaran/MI200 [Instinct MI210]")
        );
        assert_eq!(lookup_name(IDS, "0x10de", "0x740f"), None);
        assert_eq!(lookup_name(IDS, "0x8086", "0x46a6"), None);
        assert_eq!(lookup_name("\t\t\n\tzz\n10de", "0x10de", "0x0000"), None);
    }

    #[test]
    fn classes() {
        assert!(is_display_class("0x030000"));
        assert!(is_display_class("0x030200\n"));
        assert!(!is_display_class("0x020000"));
        assert!(!is_display_class("0x0300"));
    }

    #[test]
    fn bus_ids() {
        assert_eq!(
            normalize_bus_id("00000000:65:00.0").as_deref(),
            Some("0000:65:00.0")
        );
        assert_eq!(
            normalize_bus_id("0000:CA:00.0").as_deref(),
            Some("0000:ca:00.0")
        );
        assert_eq!(normalize_bus_id("01:00.1").as_deref(), Some("0000:01:00.1"));
        assert_eq!(normalize_bus_id("0000:01:00"), None);
        assert_eq!(normalize_bus_id("0000:01:20.0"), None);
        assert_eq!(normalize_bus_id("garbage"), None);
    }
}
