//! CPU identity, topology (sockets, cores, threads from sysfs `topology/`, never guessed), clocks,
//! caches, ISA features with the x86-64 microarchitecture level, and NUMA nodes.
//!
//! This module owns the [`CpuInfo`] types and [`collect`], which puts the parts together; each
//! submodule reads one source: `cpuinfo` (`/proc/cpuinfo`), `topology` (sysfs packages, cores
//! and NUMA nodes), `caches` (sysfs `cache/index*`, CPUID as a fallback), `clocks` (cpufreq,
//! the model name, CPUID), `features` (ISA flags that matter to buyers, x86-64 levels).

mod caches;
mod clocks;
mod cpuinfo;
mod features;
#[cfg(test)]
mod tests;
mod topology;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{error_chain, Notes, ProbeError};
use crate::fsroot::{parse_cpu_list, FsRoot};

pub use caches::parse_cache_size;
pub use clocks::base_clock_from_model_name;
pub use cpuinfo::{parse_cpuinfo, CpuinfoSummary};
pub use features::{x86_64_level, BUYER_FEATURES};
pub use topology::parse_node_memtotal;

use caches::{cpuid_caches, read_caches};
use clocks::{cpuid_base_mhz, read_clocks};
use cpuinfo::guess_architecture;
use topology::{read_numa, read_topology};

/// The machine's CPUs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `x86_64`, `aarch64`, ...
    pub architecture: String,
    /// CPU vendor id, e.g. `GenuineIntel`, `AuthenticAMD`.
    pub vendor: String,
    /// Marketing name from `/proc/cpuinfo` `model name`.
    pub model_name: String,
    /// CPU family (decimal, as in `/proc/cpuinfo`).
    pub family: Option<u32>,
    /// CPU model number.
    pub model: Option<u32>,
    /// CPU stepping.
    pub stepping: Option<u32>,
    /// Microcode revision as reported, e.g. `0x2b000571`.
    pub microcode: Option<String>,
    /// Physical packages (distinct `physical_package_id`).
    pub sockets: u32,
    /// Physical cores (distinct package + die + core ids).
    pub physical_cores: u32,
    /// Online logical CPUs.
    pub logical_cpus: u32,
    /// Logical CPUs per physical core (1 without SMT).
    pub threads_per_core: u32,
    /// Whether simultaneous multithreading is active (`/sys/devices/system/cpu/smt/active`, or
    /// more than one thread on a core).
    pub smt_active: bool,
    /// Online CPUs as a Linux CPU list, e.g. `0-63`.
    pub online_cpus: String,
    /// Per-package breakdown.
    pub packages: Vec<CpuPackage>,
    /// Base (nominal) clock, from cpufreq `base_frequency` or the model name.
    pub base_clock_mhz: Option<u32>,
    /// Highest clock, from cpufreq `cpuinfo_max_freq`.
    pub max_clock_mhz: Option<u32>,
    /// Lowest clock, from cpufreq `cpuinfo_min_freq`.
    pub min_clock_mhz: Option<u32>,
    /// cpufreq scaling driver, e.g. `intel_pstate`.
    pub scaling_driver: Option<String>,
    /// cpufreq governor of CPU 0, e.g. `performance`.
    pub scaling_governor: Option<String>,
    /// Caches, one entry per level and type (L1d, L1i, L2, L3).
    pub caches: Vec<CpuCache>,
    /// ISA features that matter to buyers, in a fixed order (`sse4_2`, `avx`, `avx2`, `fma`,
    /// `avx512f`, ..., `amx_tile`, `aes`, `sha_ni`), present ones only.
    pub features: Vec<String>,
    /// x86-64 microarchitecture level (1 to 4) the flags satisfy; `None` off x86-64.
    pub x86_64_level: Option<u8>,
    /// Every flag of the `flags` line, as the kernel spells them.
    pub flags: Vec<String>,
    /// NUMA nodes with their CPUs.
    pub numa_nodes: Vec<NumaNode>,
}

/// One physical package (socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPackage {
    /// `physical_package_id`.
    pub id: u32,
    /// Physical cores in this package.
    pub physical_cores: u32,
    /// Logical CPUs in this package, as a Linux CPU list.
    pub cpus: String,
}

/// One cache level and type, e.g. all L2 caches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuCache {
    /// 1, 2, 3 (4 on some parts).
    pub level: u8,
    /// `data`, `instruction` or `unified`.
    pub kind: String,
    /// Size of one instance.
    pub size_bytes: u64,
    /// How many logical CPUs share one instance.
    pub shared_by_cpus: u32,
    /// How many instances the machine has.
    pub instances: u32,
    /// Size of all instances together.
    pub total_bytes: u64,
    /// Cache line size.
    pub line_size_bytes: Option<u32>,
    /// Associativity.
    pub ways: Option<u32>,
    /// Where the figure came from: `sysfs` or `cpuid`.
    pub source: String,
}

/// One NUMA node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumaNode {
    /// Node number.
    pub id: u32,
    /// Its CPUs, as a Linux CPU list.
    pub cpus: String,
    /// Memory attached to it (`node*/meminfo` `MemTotal`).
    pub memory_total_bytes: Option<u64>,
}

/// Collects the CPU section.
pub fn collect(fs: &FsRoot, notes: &mut Notes) -> Result<CpuInfo, ProbeError> {
    let cpuinfo = parse_cpuinfo(&fs.read_string("/proc/cpuinfo")?);
    let online_text = fs.read_trimmed("/sys/devices/system/cpu/online")?;
    let online = parse_cpu_list(&online_text)
        .map_err(|e| ProbeError::parse("/sys/devices/system/cpu/online", e.to_string()))?;
    if online.is_empty() {
        return Err(ProbeError::parse(
            "/sys/devices/system/cpu/online",
            "no online CPU",
        ));
    }
    let topology = read_topology(fs, &online)?;
    let smt_active = match fs.read_opt("/sys/devices/system/cpu/smt/active").as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => topology.threads_per_core > 1,
    };
    let caches = match read_caches(fs, &online) {
        Ok(caches) if !caches.is_empty() => caches,
        result => {
            if let Err(err) = result {
                notes.add("sysfs caches", error_chain(&err));
            }
            cpuid_caches(fs, online.len())
        }
    };
    if caches.is_empty() {
        notes.add(
            "caches",
            "not exposed by sysfs and not readable from CPUID here",
        );
    }
    let clocks = read_clocks(fs);
    if clocks.max_mhz.is_none() && clocks.base_mhz.is_none() {
        notes.add("cpufreq", "not exposed by this kernel (common in VMs)");
    }
    let base_clock_mhz = clocks
        .base_mhz
        .or_else(|| base_clock_from_model_name(&cpuinfo.model_name))
        .or_else(|| cpuid_base_mhz(fs));
    let flag_set: BTreeSet<&str> = cpuinfo.flags.iter().map(String::as_str).collect();
    let features = BUYER_FEATURES
        .iter()
        .filter(|f| flag_set.contains(*f))
        .map(|f| (*f).to_owned())
        .collect();
    let architecture = fs
        .read_opt("/proc/sys/kernel/arch")
        .or_else(|| fs.is_host().then(|| std::env::consts::ARCH.to_owned()))
        .unwrap_or_else(|| guess_architecture(&cpuinfo));
    let x86_64_level = (architecture == "x86_64").then(|| x86_64_level(&flag_set));
    let numa_nodes = match read_numa(fs) {
        Ok(nodes) => nodes,
        Err(err) => {
            notes.add("numa", error_chain(&err));
            Vec::new()
        }
    };
    Ok(CpuInfo {
        architecture,
        vendor: cpuinfo.vendor,
        model_name: cpuinfo.model_name,
        family: cpuinfo.family,
        model: cpuinfo.model,
        stepping: cpuinfo.stepping,
        microcode: cpuinfo.microcode,
        sockets: topology.packages.len() as u32,
        physical_cores: topology.physical_cores,
        logical_cpus: online.len() as u32,
        threads_per_core: topology.threads_per_core,
        smt_active,
        online_cpus: online_text,
        packages: topology.packages,
        base_clock_mhz,
        max_clock_mhz: clocks.max_mhz,
        min_clock_mhz: clocks.min_mhz,
        scaling_driver: clocks.driver,
        scaling_governor: clocks.governor,
        caches,
        features,
        x86_64_level,
        flags: cpuinfo.flags,
        numa_nodes,
    })
}
