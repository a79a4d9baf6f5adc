//! RAM, swap and hugepages from `/proc/meminfo` and sysfs, and DIMMs from the SMBIOS type 17
//! records in `/sys/firmware/dmi/tables/DMI`.
//!
//! `/proc/meminfo` is parsed here rather than through sysinfo: sysinfo reads the same file but
//! cannot be pointed at a fixture root and does not expose hugepages. sysinfo serves where it
//! adds something (statvfs for filesystems, getifaddrs for addresses, telemetry counters).

mod smbios;

use std::collections::BTreeMap;

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
    let meminfo = parse_meminfo(&fs.read_string("/proc/meminfo")?);
    let field = |key: &str| -> Result<u64, ProbeError> {
        meminfo
            .get(key)
            .copied()
            .ok_or_else(|| ProbeError::parse("/proc/meminfo", format!("no {key} line")))
    };
    let hugepages = match read_hugepages(fs) {
        Ok(pools) => pools,
        Err(err) => {
            if !err.is_not_found() {
                notes.add("hugepages", super::error_chain(&err));
            }
            Vec::new()
        }
    };
    let transparent_hugepages = fs
        .read_opt("/sys/kernel/mm/transparent_hugepage/enabled")
        .and_then(|text| parse_bracketed_choice(&text));
    Ok(MemoryInfo {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
        swap_total_bytes: meminfo.get("SwapTotal").copied().unwrap_or(0),
        swap_free_bytes: meminfo.get("SwapFree").copied().unwrap_or(0),
        hugepages,
        transparent_hugepages,
        dimms: Probed::run(|_| read_dimms(fs)),
    })
}

/// Parses `/proc/meminfo` into bytes per key (`kB` values are KiB; unitless values are counts).
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let value: u64 = parts.next()?.parse().ok()?;
            let value = match parts.next() {
                Some("kB") => value.checked_mul(1024)?,
                Some(_) => return None,
                None => value,
            };
            Some((key.trim().to_owned(), value))
        })
        .collect()
}

/// The bracketed word of a sysfs choice list such as `always [madvise] never`.
pub fn parse_bracketed_choice(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = start + text[start..].find(']')?;
    Some(text[start + 1..end].to_owned()).filter(|s| !s.is_empty())
}

/// Hugepage pools from `/sys/kernel/mm/hugepages/hugepages-<size>kB`.
fn read_hugepages(fs: &FsRoot) -> Result<Vec<HugepagePool>, crate::fsroot::FsError> {
    let dir = "/sys/kernel/mm/hugepages";
    let mut pools = Vec::new();
    for name in fs.list_dir(dir)? {
        let Some(kib) = name
            .strip_prefix("hugepages-")
            .and_then(|n| n.strip_suffix("kB"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let count = |attr: &str| {
            fs.read_opt(&format!("{dir}/{name}/{attr}"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        pools.push(HugepagePool {
            page_size_bytes: kib * 1024,
            total_pages: count("nr_hugepages"),
            free_pages: count("free_hugepages"),
        });
    }
    pools.sort_by_key(|p| p.page_size_bytes);
    Ok(pools)
}

/// DIMMs from the SMBIOS structure table.
fn read_dimms(fs: &FsRoot) -> Result<Vec<Dimm>, ProbeError> {
    let path = "/sys/firmware/dmi/tables/DMI";
    let table = match fs.read_bytes(path) {
        Ok(bytes) => bytes,
        Err(err) if err.is_not_found() => {
            return Err(ProbeError::Unavailable(format!(
                "no SMBIOS tables at {path} (typical of virtual machines without firmware tables)"
            )))
        }
        Err(err) if err.source.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ProbeError::Unavailable(format!(
                "SMBIOS tables at {path} are readable by root only"
            )))
        }
        Err(err) => return Err(err.into()),
    };
    let version = fs
        .read_bytes("/sys/firmware/dmi/tables/smbios_entry_point")
        .ok()
        .and_then(|entry| smbios::entry_point_version(&entry));
    smbios::memory_devices(&table, version)
        .map_err(|e| ProbeError::parse(format!("{path} (SMBIOS)"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_units() {
        let map = parse_meminfo(
            "MemTotal:       24684084 kB\nHugePages_Total:       4\nBroken: x kB\nOdd: 5 MB\n",
        );
        assert_eq!(map["MemTotal"], 24_684_084 * 1024);
        assert_eq!(map["HugePages_Total"], 4);
        assert!(!map.contains_key("Broken"));
        assert!(!map.contains_key("Odd"));
    }

    #[test]
    fn bracketed_choice() {
        assert_eq!(
            parse_bracketed_choice("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(parse_bracketed_choice("always madvise never"), None);
        assert_eq!(parse_bracketed_choice("[]"), None);
        assert_eq!(parse_bracketed_choice("]["), None);
    }

    #[test]
    fn live_host_matches_proc_meminfo() {
        let info = collect(&FsRoot::host(), &mut Notes::default()).unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap();
        assert_eq!(info.total_bytes, total_kib * 1024);
        assert!(info.available_bytes <= info.total_bytes);
    }

    fn fixture(name: &str) -> FsRoot {
        FsRoot::new(format!(
            "{}/tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    #[test]
    fn server_fixture_dimms_and_hugepages() {
        let info = collect(&fixture("server-2s-smt"), &mut Notes::default()).unwrap();
        let dimms = info.dimms.get().unwrap();
        assert_eq!(dimms.len(), 12, "12 populated slots of 24");
        assert!(dimms.iter().all(|d| d.size_bytes == 16 << 30));
        assert_eq!(dimms[0].locator.as_deref(), Some("P1-DIMMA1"));
        assert_eq!(dimms[0].memory_type.as_deref(), Some("DDR4"));
        assert_eq!(dimms[0].speed_mts, Some(2666));
        assert_eq!(
            info.hugepages,
            vec![
                HugepagePool {
                    page_size_bytes: 2 << 20,
                    total_pages: 1024,
                    free_pages: 1000
                },
                HugepagePool {
                    page_size_bytes: 1 << 30,
                    total_pages: 4,
                    free_pages: 4
                },
            ]
        );
        assert_eq!(info.transparent_hugepages.as_deref(), Some("madvise"));
    }

    #[test]
    fn vm_fixture_has_no_smbios() {
        let info = collect(&fixture("vm-2vcpu"), &mut Notes::default()).unwrap();
        assert_eq!(
            info.dimms.status,
            crate::inventory::ProbeStatus::Unavailable
        );
        assert!(info.dimms.reason.unwrap().contains("no SMBIOS tables"));
    }
}
