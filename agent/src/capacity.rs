//! What the host offers the market: totals, the host's own reserve, allocations and what is
//! free, per resource (CPU millicores, memory, disk of the state dir's filesystem, each GPU).
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
    /// Disk bytes allocated.
    pub disk_bytes: u64,
    /// GPU PCI bus id -> job id.
    pub gpus: BTreeMap<String, String>,
}

impl Totals {
    /// The totals of the machine an inventory describes; the disk is the filesystem whose mount
    /// point is the longest prefix of `state_dir`.
    pub fn from_inventory(inventory: &Inventory, state_dir: &Path) -> Self {
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
        Self {
            cpu_millicores,
            memory_bytes,
            disk_bytes,
            gpus,
            notes,
        }
    }
}

/// free = total - reserve - allocations, per resource.
pub fn compute(totals: &Totals, reserve: &CapacityConfig, allocations: &Allocations) -> Capacity {
    let cpu_total = totals.cpu_millicores.unwrap_or(0);
    let memory_total = totals.memory_bytes.unwrap_or(0);
    let disk_total = totals.disk_bytes.unwrap_or(0);
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
}

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
        }
    }

    #[test]
    fn free_is_total_minus_reserve_minus_allocations() {
        let allocations = Allocations {
            cpu_millicores: 2500,
            memory_bytes: 300,
            disk_bytes: 0,
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
