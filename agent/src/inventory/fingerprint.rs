//! A stable hash of the hardware identity: it does not change across reboots or load, and it
//! changes when hardware changes. Benchmark results are cached by it.
//!
//! The identity is a sorted list of `kind=value` components, hashed with SHA-256:
//!
//! - `cpu`: vendor, model name, family/model/stepping, sockets, physical cores, logical CPUs
//!   (offlining CPUs or switching SMT changes what the machine can do, so it counts);
//! - `memory`: the sum of the DIMM sizes when SMBIOS lists them, otherwise `MemTotal` rounded to
//!   the nearest GiB (the kernel's reserve moves `MemTotal` by a few MiB between kernels);
//! - `gpu`: the NVML UUID, otherwise PCI vendor:device:subsystem at its bus address;
//! - `disk`: serial (or model and size when there is none) of every non-removable block device;
//! - `nic`: MAC address of every physical (non-virtual) interface.
//!
//! Nothing that moves with load or time enters it (free memory, clocks, addresses, uptime). A
//! section whose probe was unavailable contributes `kind=unavailable`, so a probe that starts
//! working again changes the fingerprint: benchmarks then run again, which is the safe side.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Inventory, Probed};

/// The hardware fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Hash algorithm, `sha256`.
    pub algorithm: String,
    /// Hex digest of the components, one per line, sorted.
    pub value: String,
    /// The identity components that were hashed, sorted.
    pub components: Vec<String>,
}

const GIB: u64 = 1 << 30;

impl Fingerprint {
    /// Computes the fingerprint of an inventory.
    pub fn of(inventory: &Inventory) -> Self {
        let mut components = Vec::new();
        components.extend(section("cpu", &inventory.cpu, |cpu| {
            vec![format!(
                "{}|{}|{}/{}/{}|sockets {}|cores {}|cpus {}",
                cpu.vendor,
                cpu.model_name,
                opt(cpu.family),
                opt(cpu.model),
                opt(cpu.stepping),
                cpu.sockets,
                cpu.physical_cores,
                cpu.logical_cpus
            )]
        }));
        components.extend(section("memory", &inventory.memory, |memory| {
            let dimm_total: Option<u64> = memory
                .dimms
                .get()
                .filter(|dimms| !dimms.is_empty())
                .map(|dimms| dimms.iter().map(|d| d.size_bytes).sum());
            vec![match dimm_total {
                Some(total) => format!("dimms {} GiB", total / GIB),
                None => format!("about {} GiB", (memory.total_bytes + GIB / 2) / GIB),
            }]
        }));
        components.extend(section("gpu", &inventory.gpus, |gpus| {
            gpus.gpus
                .iter()
                .map(
                    |gpu| match gpu.nvml.as_ref().and_then(|n| n.uuid.as_ref()) {
                        Some(uuid) => uuid.clone(),
                        None => format!(
                            "{}:{}:{}:{}@{}",
                            gpu.vendor_id,
                            gpu.device_id,
                            gpu.subsystem_vendor_id.as_deref().unwrap_or("-"),
                            gpu.subsystem_device_id.as_deref().unwrap_or("-"),
                            gpu.pci_bus_id
                        ),
                    },
                )
                .collect()
        }));
        components.extend(section("disk", &inventory.storage, |storage| {
            storage
                .block_devices
                .iter()
                .filter(|disk| !disk.removable)
                .map(|disk| match &disk.serial {
                    Some(serial) => format!("serial {serial}"),
                    None => format!(
                        "{} {} {} bytes",
                        disk.name,
                        disk.model.as_deref().unwrap_or("-"),
                        disk.size_bytes
                    ),
                })
                .collect()
        }));
        components.extend(section("nic", &inventory.network, |network| {
            network
                .interfaces
                .iter()
                .filter(|nic| !nic.is_virtual)
                .filter_map(|nic| nic.mac_address.clone())
                .collect()
        }));
        components.sort();
        let mut hasher = Sha256::new();
        for component in &components {
            hasher.update(component.as_bytes());
            hasher.update(b"\n");
        }
        Self {
            algorithm: "sha256".to_owned(),
            value: hex::encode(hasher.finalize()),
            components,
        }
    }
}

/// The components of one section, each prefixed with `kind=`; `kind=unavailable` without data.
fn section<T>(kind: &str, probed: &Probed<T>, parts: impl Fn(&T) -> Vec<String>) -> Vec<String> {
    match probed.get() {
        Some(data) => parts(data)
            .into_iter()
            .map(|part| format!("{kind}={part}"))
            .collect(),
        None => vec![format!("{kind}=unavailable")],
    }
}

fn opt(value: Option<u32>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{cpu, memory, network, ProbeStatus};

    fn ok<T>(data: T) -> Probed<T> {
        Probed {
            status: ProbeStatus::Ok,
            reason: None,
            notes: Vec::new(),
            collection_ms: 1.0,
            data: Some(data),
        }
    }

    fn unavailable<T>() -> Probed<T> {
        Probed {
            status: ProbeStatus::Unavailable,
            reason: Some("test".into()),
            notes: Vec::new(),
            collection_ms: 1.0,
            data: None,
        }
    }

    fn inventory() -> Inventory {
        Inventory {
            format: String::new(),
            agent_version: String::new(),
            collected_at: String::new(),
            collection_ms: 0.0,
            fingerprint: Fingerprint::default(),
            host: unavailable(),
            cpu: ok(cpu::CpuInfo {
                vendor: "AuthenticAMD".into(),
                model_name: "AMD EPYC".into(),
                sockets: 1,
                physical_cores: 1,
                logical_cpus: 2,
                ..Default::default()
            }),
            memory: ok(memory::MemoryInfo {
                total_bytes: 24 * GIB - 300 * (1 << 20),
                available_bytes: 20 * GIB,
                swap_total_bytes: 0,
                swap_free_bytes: 0,
                hugepages: Vec::new(),
                transparent_hugepages: None,
                dimms: unavailable(),
            }),
            gpus: unavailable(),
            storage: unavailable(),
            network: ok(network::NetworkInfo {
                interfaces: vec![
                    network::NetInterface {
                        name: "eth0".into(),
                        mac_address: Some("06:00:ac:10:00:02".into()),
                        ..Default::default()
                    },
                    network::NetInterface {
                        name: "lo".into(),
                        mac_address: Some("00:00:00:00:00:00".into()),
                        is_virtual: true,
                        ..Default::default()
                    },
                ],
                default_route_interface: Some("eth0".into()),
            }),
        }
    }

    #[test]
    fn load_and_time_do_not_change_it() {
        let a = inventory();
        let mut b = inventory();
        b.collected_at = "later".into();
        let memory = b.memory.data.as_mut().unwrap();
        memory.available_bytes = 3 * GIB;
        memory.total_bytes += 5 << 20; // another kernel reserves a little less
        b.network.data.as_mut().unwrap().interfaces[0].operstate = Some("down".into());
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&b));
        assert_eq!(Fingerprint::of(&a).value.len(), 64);
    }

    #[test]
    fn hardware_changes_change_it() {
        let base = Fingerprint::of(&inventory()).value;
        let mut more_cpus = inventory();
        more_cpus.cpu.data.as_mut().unwrap().logical_cpus = 4;
        let mut new_nic = inventory();
        new_nic.network.data.as_mut().unwrap().interfaces[0].mac_address =
            Some("06:00:ac:10:00:03".into());
        let mut more_ram = inventory();
        more_ram.memory.data.as_mut().unwrap().total_bytes = 48 * GIB;
        for changed in [more_cpus, new_nic, more_ram] {
            assert_ne!(Fingerprint::of(&changed).value, base);
        }
    }

    #[test]
    fn virtual_interfaces_do_not_count() {
        let components = Fingerprint::of(&inventory()).components;
        assert!(components.contains(&"nic=06:00:ac:10:00:02".to_owned()));
        assert!(!components.iter().any(|c| c.contains("00:00:00:00:00:00")));
        assert!(components.contains(&"memory=about 24 GiB".to_owned()));
        assert!(components.contains(&"gpu=unavailable".to_owned()));
    }
}
