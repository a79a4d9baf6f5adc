//! RAM, swap and hugepages from `/proc/meminfo` and sysfs, and DIMMs from the SMBIOS type 17
//! records in `/sys/firmware/dmi/tables/DMI`.

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError, Probed};
use crate::fsroot::FsRoot;

/// The machine's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`.
    pub available_bytes: u64,
    /// `SwapTotal`.
    pub swap_total_bytes: u64,
    /// `SwapFree`.
    pub swap_free_bytes: u64,
    /// Explicit hugepage pools, one per page size.
    pub hugepages: Vec<HugepagePool>,
    /// Transparent hugepages mode: `always`, `madvise` or `never`.
    pub transparent_hugepages: Option<String>,
    /// Memory modules from SMBIOS; `unavailable` with the reason where the tables are unreadable
    /// or absent (most VMs).
    pub dimms: Probed<Vec<Dimm>>,
}

/// One hugepage size and its pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepagePool {
    /// Page size.
    pub page_size_bytes: u64,
    /// Pages reserved in the pool.
    pub total_pages: u64,
    /// Pages free in the pool.
    pub free_pages: u64,
}

/// One memory module (SMBIOS type 17 with a non-zero size).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimm {
    /// Slot, e.g. `DIMM_A1`.
    pub locator: Option<String>,
    /// Bank, e.g. `P0 CHANNEL A`.
    pub bank_locator: Option<String>,
    /// Module size.
    pub size_bytes: u64,
    /// `DDR4`, `DDR5`, `LPDDR5`, ...
    pub memory_type: Option<String>,
    /// `DIMM`, `SODIMM`, ...
    pub form_factor: Option<String>,
    /// Rated speed.
    pub speed_mts: Option<u32>,
    /// Speed it is configured to run at.
    pub configured_speed_mts: Option<u32>,
    /// Module manufacturer.
    pub manufacturer: Option<String>,
    /// Part number.
    pub part_number: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Data width in bits (64, or 72 with ECC total width).
    pub total_width_bits: Option<u16>,
    /// Data width in bits without ECC.
    pub data_width_bits: Option<u16>,
}

/// Collects the memory section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<MemoryInfo, ProbeError> {
    let _ = (fs, notes);
    Err(ProbeError::Unavailable("memory probe not built yet".into()))
}
