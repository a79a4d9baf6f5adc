//! CPU identity, topology (sockets, cores, threads from sysfs `topology/`, never guessed), clocks,
//! caches, ISA features with the x86-64 microarchitecture level, and NUMA nodes.

use serde::{Deserialize, Serialize};

use super::{Notes, ProbeError};
use crate::fsroot::FsRoot;

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
    let _ = (fs, notes);
    Err(ProbeError::Unavailable("cpu probe not built yet".into()))
}
