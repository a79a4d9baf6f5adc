//! What the host offers the market: totals, the host's own reserve, allocations and what is
//! free, per resource (CPU millicores, memory, disk of the state dir's filesystem, network
//! bits per second into and out of jobs, each GPU).
//!
//! [`compute`] is the pure arithmetic; [`CapacityLedger`] holds the inputs, recomputes on every
//! change and publishes [`CapacitySnapshot`]s through a `watch` channel, each with a sequence
//! number that increases by one per published change (starting at 1). Watchers read the newest
//! state; a jump in the sequence means they skipped intermediate states.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::config::CapacityConfig;
use crate::inventory::Inventory;

/// Amounts of one divisible resource; `free = total - reserved - allocated - stored`, never
/// negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceAmount {
    /// What the host has.
    pub total: u64,
    /// Kept for the host.
    pub reserved: u64,
    /// Allocated to jobs.
    pub allocated: u64,
    /// What can be sold now.
    pub free: u64,
    /// Taken by what the agent stores itself (disk: the image store's images).
    pub stored: u64,
}

impl ResourceAmount {
    /// Builds the amounts; the reserve is capped at the total, and `free` saturates at zero
    /// (allocations can exceed what is left when the reserve grew after they were made).
    pub fn new(total: u64, reserved: u64, allocated: u64) -> Self {
        let reserved = reserved.min(total);
        Self {
            total,
            reserved,
            allocated,
            free: total.saturating_sub(reserved).saturating_sub(allocated),
            stored: 0,
        }
    }

    /// The same amounts with `free` at most what the filesystem has: `available` (what its
    /// `statvfs` says an unprivileged writer may still use) minus the reserve and the
    /// allocations not on the disk yet. Everything else on the disk (other data, the images,
    /// the scratch spaces already made) is already out of `available`.
    pub fn within_available(self, available: u64, unused_allocations: u64) -> Self {
        let from_filesystem = available
            .saturating_sub(self.reserved)
            .saturating_sub(unused_allocations);
        Self {
            free: self.free.min(from_filesystem),
            ..self
        }
    }

    /// The same amounts with `stored` taken by the agent's own data (out of `free`).
    pub fn with_stored(self, stored: u64) -> Self {
        Self {
            stored,
            free: self
                .total
                .saturating_sub(self.reserved)
                .saturating_sub(self.allocated)
                .saturating_sub(stored),
            ..self
        }
    }
}

/// Who holds a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuAssignment {
    /// Free to sell.
    Free,
    /// Kept for the host by config.
    Reserved,
    /// Allocated to the named job.
    Allocated(String),
}

/// One GPU's capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuCapacity {
    /// PCI address.
    pub pci_bus_id: String,
    /// Best known name.
    pub name: String,
    /// Device memory, 0 when unknown.
    pub memory_total_bytes: u64,
    /// Who holds it.
    pub assignment: GpuAssignment,
}

/// The host's capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// CPU in millicores.
    pub cpu_millicores: ResourceAmount,
    /// Memory in bytes.
    pub memory_bytes: ResourceAmount,
    /// Disk bytes on the state dir's filesystem.
    pub disk_bytes: ResourceAmount,
    /// Jobs' traffic into the host, bits per second (allocated: jobs' ingress rate limits).
    pub network_ingress_bits_per_second: ResourceAmount,
    /// Jobs' traffic out of the host, bits per second (allocated: jobs' egress rate limits).
    pub network_egress_bits_per_second: ResourceAmount,
    /// Each GPU.
    pub gpus: Vec<GpuCapacity>,
    /// Resources that could not be measured, and why (they report zero, never a guess); and,
    /// while the state filesystem is below `[state] min_free_bytes`, a note saying new jobs
    /// are refused.
    pub notes: Vec<String>,
}

/// A published capacity state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacitySnapshot {
    /// 1 for the first state, +1 per change.
    pub sequence: u64,
    /// When it was computed.
    pub updated_at: SystemTime,
    /// The state.
    pub capacity: Capacity,
}

/// One GPU as the totals know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuTotal {
    /// PCI address.
    pub pci_bus_id: String,
    /// Best known name.
    pub name: String,
    /// Device memory, 0 when unknown.
    pub memory_total_bytes: u64,
}

/// What the host has, from the inventory. `None` = could not be measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Logical CPUs x 1000.
    pub cpu_millicores: Option<u64>,
    /// MemTotal.
    pub memory_bytes: Option<u64>,
    /// Size of the filesystem holding the state dir.
    pub disk_bytes: Option<u64>,
    /// Network bits per second in each direction (full duplex): `[capacity]
    /// network_bits_per_second`, else the link speed of the default IPv4 route's interface.
    pub network_bits_per_second: Option<u64>,
    /// Every GPU.
    pub gpus: Vec<GpuTotal>,
    /// Why a total is missing.
    pub notes: Vec<String>,
}

/// What jobs hold (filled by the job runner; empty until jobs exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// CPU millicores allocated.
    pub cpu_millicores: u64,
    /// Memory bytes allocated.
    pub memory_bytes: u64,
    /// Disk bytes allocated (what jobs' scratch spaces take on the disk, or will).
    pub disk_bytes: u64,
    /// Of `disk_bytes`, what is not on the disk yet (a scratch space not made yet, or, polled,
    /// not written yet): the filesystem's available space does not show it.
    pub disk_unused_bytes: u64,
    /// Ingress rate limits allocated, bits per second (jobs without a limit allocate nothing).
    pub network_ingress_bits_per_second: u64,
    /// Egress rate limits allocated, bits per second.
    pub network_egress_bits_per_second: u64,
    /// GPU PCI bus id -> job id.
    pub gpus: BTreeMap<String, String>,
}

impl Totals {
    /// The totals of the machine an inventory describes; the disk is the filesystem whose mount
    /// point is the longest prefix of `state_dir`; the network is
    /// `configured_network_bits_per_second` (`[capacity] network_bits_per_second`) unless it is
    /// 0, else the measured link speed ([`measured_network_bits_per_second`]).
    pub fn from_inventory(
        inventory: &Inventory,
        state_dir: &Path,
        configured_network_bits_per_second: u64,
    ) -> Self {
        let mut notes = Vec::new();
        let missing = |notes: &mut Vec<String>, what: &str, reason: Option<&String>| {
            notes.push(format!(
                "{what}: {}",
                reason.map_or("inventory section unavailable", |r| r.as_str())
            ));
        };
        let cpu_millicores = match inventory.cpu.get() {
            Some(cpu) => Some(u64::from(cpu.logical_cpus) * 1000),
            None => {
                missing(&mut notes, "cpu", inventory.cpu.reason.as_ref());
                None
            }
        };
        let memory_bytes = match inventory.memory.get() {
            Some(memory) => Some(memory.total_bytes),
            None => {
                missing(&mut notes, "memory", inventory.memory.reason.as_ref());
                None
            }
        };
        let disk_bytes = match inventory.storage.get() {
            Some(storage) => {
                let holder = storage
                    .filesystems
                    .iter()
                    .filter(|fs| state_dir.starts_with(&fs.mount_point))
                    .max_by_key(|fs| fs.mount_point.len());
                match holder {
                    None => {
                        notes.push(format!(
                            "disk: no mounted filesystem holds {}",
                            state_dir.display()
                        ));
                        None
                    }
                    Some(fs) if fs.size_bytes.is_none() => {
                        notes.push(format!("disk: size of {} unknown", fs.mount_point));
                        None
                    }
                    Some(fs) => fs.size_bytes,
                }
            }
            None => {
                missing(&mut notes, "disk", inventory.storage.reason.as_ref());
                None
            }
        };
        let gpus = match inventory.gpus.get() {
            Some(gpus) => gpus
                .gpus
                .iter()
                .map(|gpu| GpuTotal {
                    pci_bus_id: gpu.pci_bus_id.clone(),
                    name: gpu.name.clone().unwrap_or_default(),
                    memory_total_bytes: gpu.memory_total_bytes.unwrap_or(0),
                })
                .collect(),
            None => {
                missing(&mut notes, "gpus", inventory.gpus.reason.as_ref());
                Vec::new()
            }
        };
        let network_bits_per_second = match configured_network_bits_per_second {
            0 => measured_network_bits_per_second(inventory)
                .map_err(|why| notes.push(why))
                .ok(),
            configured => Some(configured),
        };
        Self {
            cpu_millicores,
            memory_bytes,
            disk_bytes,
            network_bits_per_second,
            gpus,
            notes,
        }
    }
}

/// What to do when the link speed is not known.
const SET_NETWORK_CAPACITY: &str = "set [capacity] network_bits_per_second";

/// The link speed of the interface holding the default IPv4 route, in bits per second, or the
/// note saying why it is not known.
pub fn measured_network_bits_per_second(inventory: &Inventory) -> Result<u64, String> {
    let Some(network) = inventory.network.get() else {
        let reason = inventory
            .network
            .reason
            .as_deref()
            .unwrap_or("inventory section unavailable");
        return Err(format!("network: {reason}; {SET_NETWORK_CAPACITY}"));
    };
    let Some(name) = network.default_route_interface.as_deref() else {
        return Err(format!(
            "network: no default IPv4 route, so no link speed to offer; {SET_NETWORK_CAPACITY}"
        ));
    };
    network
        .default_route()
        .and_then(|interface| interface.speed_mbps)
        .map(|mbps| u64::from(mbps) * 1_000_000)
        .ok_or_else(|| {
            format!(
                "network: link speed of the default-route interface {name} unknown; \
                 {SET_NETWORK_CAPACITY}"
            )
        })
}

/// free = total - reserve - allocations, per resource.
pub fn compute(totals: &Totals, reserve: &CapacityConfig, allocations: &Allocations) -> Capacity {
    let cpu_total = totals.cpu_millicores.unwrap_or(0);
    let memory_total = totals.memory_bytes.unwrap_or(0);
    let disk_total = totals.disk_bytes.unwrap_or(0);
    let network_total = totals.network_bits_per_second.unwrap_or(0);
    let gpus = totals
        .gpus
        .iter()
        .map(|gpu| {
            let assignment = if let Some(job) = allocations.gpus.get(&gpu.pci_bus_id) {
                GpuAssignment::Allocated(job.clone())
            } else if reserve
                .reserve_gpus
                .iter()
                .any(|id| id.eq_ignore_ascii_case(&gpu.pci_bus_id))
            {
                GpuAssignment::Reserved
            } else {
                GpuAssignment::Free
            };
            GpuCapacity {
                pci_bus_id: gpu.pci_bus_id.clone(),
                name: gpu.name.clone(),
                memory_total_bytes: gpu.memory_total_bytes,
                assignment,
            }
        })
        .collect();
    Capacity {
        cpu_millicores: ResourceAmount::new(
            cpu_total,
            reserve.reserve_cpu_millicores,
            allocations.cpu_millicores,
        ),
        memory_bytes: ResourceAmount::new(
            memory_total,
            reserve.reserve_memory.of(memory_total),
            allocations.memory_bytes,
        ),
        disk_bytes: ResourceAmount::new(
            disk_total,
            reserve.reserve_disk.of(disk_total),
            allocations.disk_bytes,
        ),
        // The host keeps no network for itself: its own traffic is not rate limited.
        network_ingress_bits_per_second: ResourceAmount::new(
            network_total,
            0,
            allocations.network_ingress_bits_per_second,
        ),
        network_egress_bits_per_second: ResourceAmount::new(
            network_total,
            0,
            allocations.network_egress_bits_per_second,
        ),
        gpus,
        notes: totals.notes.clone(),
    }
}

/// What the ledger computes the capacity from.
#[derive(Debug, Default)]
struct Inputs {
    totals: Totals,
    allocations: Allocations,
    /// The state filesystem's note while it is below its floor.
    state_disk_note: Option<String>,
    /// Bytes the image store's unpacked images take on the state filesystem.
    image_bytes: u64,
    /// What the state filesystem has available for jobs (see
    /// [`CapacityLedger::set_disk_available`]); unknown until first set.
    disk_available: Option<u64>,
}

/// How far the state filesystem's available space may drift before the ledger publishes it
/// from a routine look ([`CapacityLedger::set_disk_available`] with `exact = false`): logs and
/// scratch writes move it all the time, and watchers want changes, not noise.
pub const DISK_AVAILABLE_STEP: u64 = 64 << 20;

/// Holds the capacity inputs and publishes every change.
#[derive(Debug)]
pub struct CapacityLedger {
    reserve: CapacityConfig,
    inputs: Mutex<Inputs>,
    tx: watch::Sender<Arc<CapacitySnapshot>>,
}

impl CapacityLedger {
    /// A ledger with the given reserve and initial totals; publishes sequence 1.
    pub fn new(reserve: CapacityConfig, totals: Totals) -> Self {
        let allocations = Allocations::default();
        let snapshot = CapacitySnapshot {
            sequence: 1,
            updated_at: SystemTime::now(),
            capacity: compute(&totals, &reserve, &allocations),
        };
        let (tx, _) = watch::channel(Arc::new(snapshot));
        Self {
            reserve,
            inputs: Mutex::new(Inputs {
                totals,
                allocations,
                ..Inputs::default()
            }),
            tx,
        }
    }

    /// The newest state.
    pub fn current(&self) -> Arc<CapacitySnapshot> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees the newest state and every later change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CapacitySnapshot>> {
        self.tx.subscribe()
    }

    /// Replaces the totals (after an inventory refresh); publishes if the capacity changed.
    pub fn set_totals(&self, totals: Totals) {
        self.update(|inputs| inputs.totals = totals);
    }

    /// Replaces the allocations (the job runner's hook); publishes if the capacity changed.
    pub fn set_allocations(&self, allocations: Allocations) {
        self.update(|inputs| inputs.allocations = allocations);
    }

    /// Replaces the allocations and, when known, sets what the state filesystem has available
    /// for jobs exactly (see [`Self::set_disk_available`]), in one change: a scratch space
    /// that went onto the disk leaves `disk_unused_bytes` as it enters the available space.
    pub fn set_allocations_and_disk(&self, allocations: Allocations, available: Option<u64>) {
        self.update(|inputs| {
            inputs.allocations = allocations;
            if available.is_some() {
                inputs.disk_available = available;
            }
        });
    }

    /// Sets (or, with `None`, clears) the note saying the state filesystem is below its
    /// free-space floor (the job runner's hook); publishes if it changed.
    pub fn set_state_disk_note(&self, note: Option<String>) {
        self.update(|inputs| inputs.state_disk_note = note);
    }

    /// Sets the bytes the image store's images take on the state filesystem (after an import,
    /// a removal, and each inventory collection): disk `stored`, out of `free`. Publishes if
    /// the capacity changed.
    pub fn set_image_bytes(&self, bytes: u64) {
        self.update(|inputs| inputs.image_bytes = bytes);
    }

    /// Sets what the state filesystem has available for jobs (its available space less the
    /// agent's own floor, `[state] min_free_bytes`), which bounds disk `free` (see
    /// [`ResourceAmount::within_available`]). A routine look (`exact = false`: the telemetry
    /// tick) changes it only when it moved by [`DISK_AVAILABLE_STEP`] or more; an admission
    /// sets it exactly. Publishes if the capacity changed.
    pub fn set_disk_available(&self, bytes: u64, exact: bool) {
        self.update(|inputs| {
            let moved = inputs
                .disk_available
                .is_none_or(|current| current.abs_diff(bytes) >= DISK_AVAILABLE_STEP);
            if exact || moved {
                inputs.disk_available = Some(bytes);
            }
        });
    }

    fn update(&self, change: impl FnOnce(&mut Inputs)) {
        // A poisoned lock only means another updater panicked mid-assignment; the inputs are
        // plain data, still usable.
        let mut inputs = self
            .inputs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut inputs);
        let mut capacity = compute(&inputs.totals, &self.reserve, &inputs.allocations);
        capacity.disk_bytes = capacity.disk_bytes.with_stored(inputs.image_bytes);
        if let Some(available) = inputs.disk_available {
            capacity.disk_bytes = capacity
                .disk_bytes
                .within_available(available, inputs.allocations.disk_unused_bytes);
        }
        capacity.notes.extend(inputs.state_disk_note.clone());
        self.tx.send_if_modified(|current| {
            if current.capacity == capacity {
                return false;
            }
            *current = Arc::new(CapacitySnapshot {
                sequence: current.sequence + 1,
                updated_at: SystemTime::now(),
                capacity,
            });
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Amount;

    fn totals() -> Totals {
        Totals {
            cpu_millicores: Some(8000),
            memory_bytes: Some(1000),
            disk_bytes: Some(10_000),
            network_bits_per_second: Some(1_000_000_000),
            gpus: vec![
                GpuTotal {
                    pci_bus_id: "0000:01:00.0".into(),
                    name: "A".into(),
                    memory_total_bytes: 24,
                },
                GpuTotal {
                    pci_bus_id: "0000:02:00.0".into(),
                    name: "B".into(),
                    memory_total_bytes: 0,
                },
            ],
            notes: Vec::new(),
        }
    }

    fn reserve() -> CapacityConfig {
        CapacityConfig {
            reserve_cpu_millicores: 1000,
            reserve_memory: Amount::Percent(10),
            reserve_disk: Amount::Bytes(500),
            reserve_gpus: vec!["0000:02:00.0".into()],
            network_bits_per_second: 0,
        }
    }

    #[test]
    fn free_disk_is_at_most_what_the_filesystem_has_available() {
        // 10,000 bytes of disk, 500 reserved; other data left only 3,000 available, and a job
        // holds 1,000 of which 400 are not on the disk yet.
        let ledger = CapacityLedger::new(reserve(), totals());
        ledger.set_allocations(Allocations {
            disk_bytes: 1_000,
            disk_unused_bytes: 400,
            ..Allocations::default()
        });
        assert_eq!(
            ledger.current().capacity.disk_bytes.free,
            8_500,
            "before a look"
        );
        ledger.set_disk_available(3_000, true);
        let disk = ledger.current().capacity.disk_bytes;
        assert_eq!(
            (disk.total, disk.reserved, disk.allocated),
            (10_000, 500, 1_000)
        );
        assert_eq!(disk.free, 3_000 - 500 - 400);
        // A routine look publishes only a move of DISK_AVAILABLE_STEP or more.
        let sequence = ledger.current().sequence;
        ledger.set_disk_available(2_000, false);
        assert_eq!(
            ledger.current().sequence,
            sequence,
            "noise is not published"
        );
        assert_eq!(ledger.current().capacity.disk_bytes.free, 2_100);
        ledger.set_disk_available(2_000, true);
        assert_eq!(ledger.current().capacity.disk_bytes.free, 1_100);
        // The total-based figure still bounds it when the filesystem has more.
        ledger.set_disk_available(DISK_AVAILABLE_STEP * 4, false);
        assert_eq!(ledger.current().capacity.disk_bytes.free, 8_500);
    }

    #[test]
    fn free_is_total_minus_reserve_minus_allocations() {
        let allocations = Allocations {
            cpu_millicores: 2500,
            memory_bytes: 300,
            disk_bytes: 0,
            disk_unused_bytes: 0,
            network_ingress_bits_per_second: 100_000_000,
            network_egress_bits_per_second: 0,
            gpus: BTreeMap::from([("0000:01:00.0".into(), "job-1".into())]),
        };
        let capacity = compute(&totals(), &reserve(), &allocations);
        assert_eq!(
            capacity.cpu_millicores,
            ResourceAmount {
                total: 8000,
                reserved: 1000,
                allocated: 2500,
                free: 4500,
                stored: 0,
            }
        );
        assert_eq!(capacity.memory_bytes.reserved, 100);
        assert_eq!(capacity.memory_bytes.free, 600);
        assert_eq!(capacity.disk_bytes.free, 9500);
        assert_eq!(
            capacity.gpus[0].assignment,
            GpuAssignment::Allocated("job-1".into())
        );
        assert_eq!(capacity.gpus[1].assignment, GpuAssignment::Reserved);
        assert_eq!(
            capacity.network_ingress_bits_per_second,
            ResourceAmount::new(1_000_000_000, 0, 100_000_000),
            "no reserve for the host"
        );
        assert_eq!(capacity.network_ingress_bits_per_second.free, 900_000_000);
        assert_eq!(
            capacity.network_egress_bits_per_second.free, 1_000_000_000,
            "each direction is allocated on its own"
        );
    }

    fn fixture_inventory(name: &str) -> Inventory {
        crate::inventory::collect_from(crate::fsroot::FsRoot::new(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        )))
    }

    fn network_notes(totals: &Totals) -> Vec<&str> {
        totals
            .notes
            .iter()
            .map(String::as_str)
            .filter(|note| note.starts_with("network: "))
            .collect()
    }

    #[test]
    fn the_network_total_is_the_default_route_link_speed_unless_configured() {
        let server = fixture_inventory("server-2s-smt");
        let measured = Totals::from_inventory(&server, Path::new("/data"), 0);
        assert_eq!(measured.network_bits_per_second, Some(25_000_000_000));
        assert!(network_notes(&measured).is_empty());
        let configured = Totals::from_inventory(&server, Path::new("/data"), 2_000_000_000);
        assert_eq!(configured.network_bits_per_second, Some(2_000_000_000));

        // The laptop's default route is over Wi-Fi, whose driver gives no speed.
        let laptop = fixture_inventory("laptop-hybrid");
        let unknown = Totals::from_inventory(&laptop, Path::new("/"), 0);
        assert_eq!(unknown.network_bits_per_second, None);
        assert_eq!(
            network_notes(&unknown),
            [
                "network: link speed of the default-route interface wlp0s20f3 unknown; \
              set [capacity] network_bits_per_second"
            ]
        );
        let capacity = compute(&unknown, &reserve(), &Allocations::default());
        assert_eq!(capacity.network_egress_bits_per_second.total, 0);
        let configured = Totals::from_inventory(&laptop, Path::new("/"), 100_000_000);
        assert_eq!(configured.network_bits_per_second, Some(100_000_000));
        assert!(network_notes(&configured).is_empty(), "configured: no note");
    }

    #[test]
    fn a_host_without_a_default_route_or_network_section_says_so() {
        let mut server = fixture_inventory("server-2s-smt");
        if let Some(network) = server.network.data.as_mut() {
            network.default_route_interface = None;
        }
        assert_eq!(
            measured_network_bits_per_second(&server).unwrap_err(),
            "network: no default IPv4 route, so no link speed to offer; \
             set [capacity] network_bits_per_second"
        );
        server.network.data = None;
        server.network.reason = Some("cannot read /sys/class/net".into());
        assert_eq!(
            measured_network_bits_per_second(&server).unwrap_err(),
            "network: cannot read /sys/class/net; set [capacity] network_bits_per_second"
        );
    }

    #[test]
    fn reserve_and_allocations_never_make_free_negative() {
        let amount = ResourceAmount::new(1000, 5000, 10);
        assert_eq!((amount.reserved, amount.free), (1000, 0));
        assert_eq!(ResourceAmount::new(1000, 100, 5000).free, 0);
    }

    #[test]
    fn unmeasured_totals_report_zero_with_notes() {
        let totals = Totals {
            notes: vec!["memory: no meminfo".into()],
            ..Totals::default()
        };
        let capacity = compute(&totals, &reserve(), &Allocations::default());
        assert_eq!(capacity.memory_bytes, ResourceAmount::default());
        assert_eq!(capacity.cpu_millicores.free, 0);
        assert_eq!(capacity.notes, ["memory: no meminfo"]);
    }

    #[test]
    fn stored_images_are_kept_for_the_host_and_survive_new_totals() {
        let ledger = CapacityLedger::new(reserve(), totals());
        ledger.set_allocations(Allocations {
            disk_bytes: 1000,
            ..Allocations::default()
        });
        ledger.set_image_bytes(3000);
        let disk = ledger.current().capacity.disk_bytes;
        assert_eq!(
            (disk.reserved, disk.allocated, disk.stored, disk.free),
            (500, 1000, 3000, 5500)
        );
        ledger.set_totals(totals());
        ledger.set_allocations(Allocations::default());
        let disk = ledger.current().capacity.disk_bytes;
        assert_eq!((disk.stored, disk.free), (3000, 6500));
        assert_eq!(ledger.current().capacity.cpu_millicores.stored, 0);
        ledger.set_image_bytes(20_000);
        let disk = ledger.current().capacity.disk_bytes;
        assert_eq!((disk.stored, disk.free), (20_000, 0), "free never negative");
    }

    #[test]
    fn ledger_sequences_changes_and_skips_no_ops() {
        let ledger = CapacityLedger::new(reserve(), totals());
        let mut rx = ledger.subscribe();
        assert_eq!(rx.borrow_and_update().sequence, 1);
        ledger.set_totals(totals());
        assert!(!rx.has_changed().unwrap(), "same totals publish nothing");
        ledger.set_allocations(Allocations {
            cpu_millicores: 1000,
            ..Allocations::default()
        });
        assert!(rx.has_changed().unwrap());
        let snapshot = rx.borrow_and_update().clone();
        assert_eq!(snapshot.sequence, 2);
        assert_eq!(snapshot.capacity.cpu_millicores.free, 6000);
        assert_eq!(ledger.current().sequence, 2);
        ledger.set_state_disk_note(Some("disk: below the floor".into()));
        assert_eq!(ledger.current().capacity.notes, ["disk: below the floor"]);
        assert_eq!(ledger.current().sequence, 3);
        ledger.set_state_disk_note(Some("disk: below the floor".into()));
        assert_eq!(
            ledger.current().sequence,
            3,
            "the same note publishes nothing"
        );
        ledger.set_state_disk_note(None);
        assert!(ledger.current().capacity.notes.is_empty());
    }
}
