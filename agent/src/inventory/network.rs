//! Network interfaces from `/sys/class/net` (MAC, MTU, operstate, link speed, driver), their
//! addresses (through sysinfo's getifaddrs on the live host) and which one holds the default
//! IPv4 route (`/proc/net/route`).

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError};
use crate::fsroot::FsRoot;

/// The machine's network interfaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// Every interface, physical first, then virtual, each sorted by name.
    pub interfaces: Vec<NetInterface>,
    /// The interface of the default IPv4 route (the one with the lowest metric); `None` when
    /// there is none or the routing table could not be read.
    pub default_route_interface: Option<String>,
}

impl NetworkInfo {
    /// The interface holding the default IPv4 route, when it is one of `interfaces`.
    pub fn default_route(&self) -> Option<&NetInterface> {
        let name = self.default_route_interface.as_deref()?;
        self.interfaces.iter().find(|i| i.name == name)
    }
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
    let default_route_interface = notes
        .ok("default_route", fs.read_string("/proc/net/route"))
        .and_then(|table| default_route_in(&table));
    Ok(NetworkInfo {
        interfaces,
        default_route_interface,
    })
}

/// The interface of the default route in `/proc/net/route` (`Iface Destination Gateway Flags
/// RefCnt Use Metric Mask ...`, addresses in hex): destination and mask 0, flag `RTF_UP` set;
/// the lowest metric wins, the first of equal ones.
pub fn default_route_in(table: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [iface, destination, _gateway, flags, _refcnt, _use, metric, mask, ..] = fields[..]
            else {
                return None;
            };
            let flags = u32::from_str_radix(flags, 16).ok()?;
            let is_default = destination == "00000000" && mask == "00000000";
            (is_default && flags & RTF_UP != 0)
                .then(|| Some((metric.parse::<u32>().ok()?, iface)))
                .flatten()
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, iface)| iface.to_owned())
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
        assert_eq!(info.default_route_interface.as_deref(), Some("ens1f0"));
        assert_eq!(info.default_route().and_then(|i| i.speed_mbps), Some(25000));
    }

    #[test]
    fn default_route_is_the_up_zero_route_with_the_lowest_metric() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let table = format!(
            "{header}\
             wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
             eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
             eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
             down0\t00000000\t0100A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
        );
        assert_eq!(default_route_in(&table).as_deref(), Some("eth0"));
        assert_eq!(default_route_in(header), None, "no default route");
        assert_eq!(default_route_in(""), None);
        assert_eq!(default_route_in("Iface\neth0 garbage\n"), None);
    }

    #[test]
    fn an_unreadable_routing_table_is_a_note() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/net")).unwrap();
        let mut notes = Notes::default();
        let info = collect(&FsRoot::new(root.path()), &mut notes).unwrap();
        assert_eq!(info.default_route_interface, None);
        assert!(
            notes
                .as_slice()
                .iter()
                .any(|n| n.starts_with("default_route: ")),
            "{:?}",
            notes.as_slice()
        );
    }
}
