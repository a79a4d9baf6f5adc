//! Network interfaces from `/sys/class/net` (MAC, MTU, operstate, link speed, driver) and their
//! addresses (through sysinfo's getifaddrs on the live host).

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError};
use crate::fsroot::FsRoot;

/// The machine's network interfaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Every interface, physical first, then virtual, each sorted by name.
    pub interfaces: Vec<NetInterface>,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    /// Kernel name, e.g. `eth0`, `enp65s0f0`.
    pub name: String,
    /// Hardware address (`address`), lowercase.
    pub mac_address: Option<String>,
    /// MTU.
    pub mtu: Option<u32>,
    /// `up`, `down`, `unknown`, ...
    pub operstate: Option<String>,
    /// Link speed when the link is up and the driver reports it.
    pub speed_mbps: Option<u32>,
    /// `full` or `half`.
    pub duplex: Option<String>,
    /// Kernel driver, e.g. `mlx5_core`, `virtio_net`.
    pub driver: Option<String>,
    /// PCI address of the NIC, when it is a PCI device.
    pub pci_bus_id: Option<String>,
    /// True for software interfaces (loopback, bridges, veth, tunnels: under
    /// `/sys/devices/virtual/net`).
    pub is_virtual: bool,
    /// IPv4 and IPv6 addresses.
    pub addresses: Vec<IpAddress>,
}

/// One address of an interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddress {
    /// The address, e.g. `192.0.2.10` or `fe80::1`.
    pub address: String,
    /// Prefix length, e.g. 24.
    pub prefix_len: u8,
}

/// Collects the network section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<NetworkInfo, ProbeError> {
    let mut interfaces: Vec<NetInterface> = fs
        .list_dir("/sys/class/net")?
        .into_iter()
        .filter(|name| fs.exists(&format!("/sys/class/net/{name}/address")))
        .map(|name| read_interface(fs, name))
        .collect();
    if fs.is_host() {
        fill_addresses(&mut interfaces);
    } else {
        notes.add("addresses", "getifaddrs needs the live host");
    }
    interfaces.sort_by(|a, b| (a.is_virtual, &a.name).cmp(&(b.is_virtual, &b.name)));
    Ok(NetworkInfo { interfaces })
}

fn read_interface(fs: &FsRoot, name: String) -> NetInterface {
    let base = format!("/sys/class/net/{name}");
    let path = fs
        .link_target(&base)
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    NetInterface {
        mac_address: fs
            .read_opt(&format!("{base}/address"))
            .map(|mac| mac.to_lowercase()),
        mtu: fs
            .read_opt(&format!("{base}/mtu"))
            .and_then(|v| v.parse().ok()),
        operstate: fs.read_opt(&format!("{base}/operstate")),
        // Reading `speed` of a down link fails with EINVAL; unknown speed reads -1.
        speed_mbps: fs
            .read_opt(&format!("{base}/speed"))
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|s| *s > 0)
            .and_then(|s| u32::try_from(s).ok()),
        duplex: fs
            .read_opt(&format!("{base}/duplex"))
            .filter(|d| d != "unknown"),
        driver: fs.link_name(&format!("{base}/device/driver")),
        pci_bus_id: pci_address_in_path(&path),
        is_virtual: path.contains("/devices/virtual/"),
        addresses: Vec::new(),
        name,
    }
}

/// The last PCI address (`dddd:bb:dd.f`) in a sysfs device path: the NIC's PCI function.
pub fn pci_address_in_path(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|part| is_pci_address(part))
        .map(str::to_owned)
}

fn is_pci_address(part: &str) -> bool {
    let b = part.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// Addresses and prefix lengths from sysinfo (getifaddrs).
fn fill_addresses(interfaces: &mut [NetInterface]) {
    let Ok(networks) = sysinfo::Networks::new_with_refreshed_list() else {
        return;
    };
    for (name, data) in &networks {
        if let Some(interface) = interfaces
            .iter_mut()
            .find(|i| name.as_os_str() == i.name.as_str())
        {
            let mut addresses: Vec<IpAddress> = data
                .ip_networks()
                .iter()
                .map(|net| IpAddress {
                    address: net.addr.to_string(),
                    prefix_len: net.prefix,
                })
                .collect();
            addresses.sort_by(|a, b| a.address.cmp(&b.address));
            interface.addresses = addresses;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_in_paths() {
        assert_eq!(
            pci_address_in_path("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0")
                .as_deref(),
            Some("0000:00:03.0")
        );
        assert_eq!(
            pci_address_in_path("../../devices/pci0000:00/0000:00:01.0/0000:41:00.1/net/enp65s0f1")
                .as_deref(),
            Some("0000:41:00.1")
        );
        assert_eq!(pci_address_in_path("../../devices/virtual/net/lo"), None);
        assert!(!is_pci_address("0000:0g:00.0"));
    }

    #[test]
    fn live_host_macs_match_sysfs() {
        let info = collect(&FsRoot::host(), &mut Notes::default()).unwrap();
        for interface in &info.interfaces {
            let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", interface.name))
                .unwrap();
            assert_eq!(interface.mac_address.as_deref(), Some(mac.trim()));
        }
        let lo = info.interfaces.iter().find(|i| i.name == "lo").unwrap();
        assert!(lo.is_virtual);
        assert!(lo
            .addresses
            .iter()
            .any(|a| a.address == "127.0.0.1" && a.prefix_len == 8));
        // Physical interfaces come first.
        let first_virtual = info.interfaces.iter().position(|i| i.is_virtual).unwrap();
        assert!(info.interfaces[first_virtual..]
            .iter()
            .all(|i| i.is_virtual));
    }

    #[test]
    fn server_fixture_nics() {
        let root = FsRoot::new(format!(
            "{}/tests/fixtures/server-2s-smt",
            env!("CARGO_MANIFEST_DIR")
        ));
        let info = collect(&root, &mut Notes::default()).unwrap();
        let names: Vec<&str> = info.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["eno1", "ens1f0", "ens1f1", "docker0", "lo"]);
        let up = &info.interfaces[1];
        assert_eq!(up.speed_mbps, Some(25000));
        assert_eq!(up.driver.as_deref(), Some("mlx5_core"));
        assert_eq!(up.pci_bus_id.as_deref(), Some("0000:18:00.0"));
        assert_eq!(up.mtu, Some(9000));
        let down = &info.interfaces[2];
        assert_eq!(down.speed_mbps, None, "a down link has no speed");
        assert_eq!(down.duplex, None);
        assert!(info.interfaces[3].is_virtual);
    }
}
