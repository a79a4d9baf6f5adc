//! Network interfaces from `/sys/class/net` (MAC, MTU, operstate, link speed, driver) and their
//! addresses.

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
    let _ = (fs, notes);
    Err(ProbeError::Unavailable(
        "network probe not built yet".into(),
    ))
}
